"""The devices `plan` can price a run on: datasheet peaks and the share of them a stage sustains.

Sources (dense tensor rates, no structured sparsity; vendor datasheets):
- V100 SXM2 32 GB: NVIDIA Tesla V100 datasheet (15.7 TFLOP/s fp32, 125 fp16 tensor, no bf16
  or tf32 units, 900 GB/s HBM2).
- A100 SXM4 40/80 GB: NVIDIA A100 datasheet (19.5 fp32, 156 tf32, 312 bf16/fp16; 1,555 and
  2,039 GB/s).
- H100 SXM5 80 GB: NVIDIA H100 datasheet (67 fp32, 495 tf32, 989 bf16/fp16; 3.35 TB/s).
- H200 SXM 141 GB: NVIDIA H200 datasheet (the H100's compute; 4.8 TB/s HBM3e).
- L40S 48 GB: NVIDIA L40S datasheet (91.6 fp32, 183 tf32, 362 bf16/fp16; 864 GB/s).
- RTX 4090 24 GB: NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 column
  (82.6 fp32, 82.6 tf32, 165.2 bf16/fp16 with fp32 accumulate; 1,008 GB/s).
- `cpu`: one core of a recent x86 server (AVX2, two FMA units, ~3 GHz: 2 x 8 x 2 x 3e9 =
  96 GFLOP/s; ~10 GB/s of memory bandwidth per core). There is no datasheet for "a CPU": this
  row is a placeholder that `prism-hpc bench recover --calibrate` should replace.

Efficiencies are not measured per device: they are one assumption for every device, stated
here so that a reader can disagree with it. Convolutions reach about half of the peak of the
precision they run in (cuDNN convs run in tf32 by default on devices that have it, so "fp32"
work is priced at the tf32 rate); the element-wise work around them (BN, activations, the
recovery's BN-statistics hooks) is bounded by memory bandwidth, of which ~60 % is reached.
`TRAFFIC` says how many times a kind of work moves its saved activations through memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism_hpc.config.schema import DEVICE_NAMES
from prism_hpc.errors import UserError

KINDS = ("recover", "train", "infer")  # fwd+bwd to the input | fwd+bwd+update | fwd only
PRECISIONS = ("fp32", "bf16", "fp16")

COMPUTE_EFFICIENCY = {"recover": 0.5, "train": 0.5, "infer": 0.6}
MEMORY_EFFICIENCY = 0.6
TRAFFIC = {"recover": 4.0, "train": 6.0, "infer": 2.0}  # x saved-activation bytes per image
DEFAULT_GPU = "a100-80"  # what an estimate assumes when `resources.<stage>.gpu` is unset


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    fp32: float  # FLOP/s, plain fp32 (non-tensor)
    tf32: float  # FLOP/s of fp32 convolutions (tf32 tensor cores where present)
    bf16: float
    fp16: float
    mem_bw: float  # bytes/s
    memory_gb: float  # per GPU; 0 for the CPU (host memory is `mem_gb`)
    step_overhead_s: float  # per optimiser step / iteration: launches, Python, the Adam update
    task_overhead_s: float  # per task: imports, CUDA/data start-up, loading the models
    context_gb: float  # memory a process holds before any tensor (CUDA context, workspaces)
    # sustained share of the peak per kind of work, and of the memory bandwidth (one shared
    # assumption unless a row overrides it; see the module doc)
    efficiency: tuple[tuple[str, float], ...] = tuple(COMPUTE_EFFICIENCY.items())
    memory_efficiency: float = MEMORY_EFFICIENCY

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"

    def sustained(self, kind: str) -> float:
        return dict(self.efficiency)[kind]

    def peak(self, precision: str) -> float:
        """Peak FLOP/s that convolutions in `precision` can use."""
        return {"fp32": self.tf32, "bf16": self.bf16, "fp16": self.fp16}[precision]


T = 1e12
G = 1e9
_GPU = {"step_overhead_s": 0.002, "task_overhead_s": 60.0, "context_gb": 0.6}
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("v100", "V100 SXM2 32 GB", 15.7 * T, 15.7 * T, 15.7 * T, 125 * T, 900 * G, 32, **_GPU),
        Device("a100-40", "A100 SXM4 40 GB", 19.5 * T, 156 * T, 312 * T, 312 * T, 1555 * G, 40, **_GPU),
        Device("a100-80", "A100 SXM4 80 GB", 19.5 * T, 156 * T, 312 * T, 312 * T, 2039 * G, 80, **_GPU),
        Device("h100", "H100 SXM5 80 GB", 67 * T, 495 * T, 989 * T, 989 * T, 3350 * G, 80, **_GPU),
        Device("h200", "H200 SXM 141 GB", 67 * T, 495 * T, 989 * T, 989 * T, 4800 * G, 141, **_GPU),
        Device("l40s", "L40S 48 GB", 91.6 * T, 183 * T, 362 * T, 362 * T, 864 * G, 48, **_GPU),
        Device("rtx4090", "RTX 4090 24 GB", 82.6 * T, 82.6 * T, 165.2 * T, 165.2 * T, 1008 * G, 24, **_GPU),
        Device("cpu", "one CPU core (placeholder)", 96 * G, 96 * G, 96 * G, 96 * G, 10 * G, 0,
               step_overhead_s=0.0005, task_overhead_s=1.0, context_gb=0.0),
    )
}  # fmt: skip
assert tuple(DEVICES) == DEVICE_NAMES, "keep config.schema.DEVICE_NAMES in step"


def device(name: str) -> Device:
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise UserError(f"unknown device {name!r} (known: {', '.join(DEVICES)})") from None


def guess_device(cuda_name: str) -> str | None:
    """Table name of a CUDA device from `torch.cuda.get_device_name` (None: not in the table)."""
    n = cuda_name.lower().replace(" ", "")
    if "h200" in n:
        return "h200"
    if "h100" in n:
        return "h100"
    if "a100" in n:
        return "a100-80" if "80g" in n else "a100-40"
    if "l40s" in n:
        return "l40s"
    if "4090" in n:
        return "rtx4090"
    if "v100" in n:
        return "v100"
    return None
