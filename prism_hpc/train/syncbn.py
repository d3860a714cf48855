"""BatchNorm over the whole micro-batch when it is split across DDP ranks (`students.sync_bn`).

On GPUs this is `torch.nn.SyncBatchNorm` (NCCL kernels). torch refuses CPU tensors there, so
for CPU/gloo ranks (tests, CPU clusters) `GlobalBatchNorm` does the same arithmetic with a
differentiable all-reduce of per-channel (sum, sum of squares, count): the normalisation, the
gradients and the running statistics then equal one process seeing the whole micro-batch.
State-dict keys are those of `nn.BatchNorm2d`, so checkpoints and EMA do not change.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics span every rank of the default process group."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        xd = x.double()  # sums in float64: E[x^2] - E[x]^2 must not cancel
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])
        total = _AllReduceSum.apply(local)  # backward all-reduces the gradient: the global-batch math
        c = x.shape[1]
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        mean, invstd = mean.float().view(shape), torch.rsqrt(var.float().view(shape) + self.eps)
        y = (x.float() - mean) * invstd
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` synchronised across ranks: torch's SyncBatchNorm on CUDA,
    `GlobalBatchNorm` elsewhere (parameters and buffers carried over)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        out.load_state_dict(module.state_dict())
        out.to(next(iter(module.buffers()), torch.zeros(0)).device)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
