"""Run the `ddranking` package (PyPI 0.2.0) and print one JSON object on stdout.

Runs only with the interpreter of the env that `make_env.sh` builds (ddranking pins numpy<2);
prism_hpc never imports it. Everything ddranking prints goes to stderr, so stdout is the JSON.

    evaluate.py formula --real-hard 90 --syn-hard 60 --syn-any 70 --rdm-any 50 [--weight 0.5]
    evaluate.py lrs --real REAL --syn SYN --ipc 1 [--epochs 20 --syn-lr 0.01 --device cpu ...]

`formula`: ddranking has no function that scores given accuracies; its HLR/IOR/LRS lines sit
inside `compute_metrics`. This mode runs that method of `LabelRobustScoreSoft` (and of
`LabelRobustScoreHard`) on an instance whose accuracy providers (the `_compute_*_helper`
methods that would train students, and the random-subset maker) return the given accuracies;
the formula, the means and the returned dict are the package's own code, unchanged.

`lrs`: `LabelRobustScoreSoft(...).compute_metrics(image_path=SYN, syn_lr=...)` unchanged
(soft-label mode M: a teacher labels each batch), on real data laid out as ImageFolder
`REAL/train/<class>/` and `REAL/val/<class>/`. ddranking reads such a layout only under
`dataset='TinyImageNet'` (its other names need CIFAR's downloaded files or ImageNet's class ids),
which fixes 200 classes: after its constructor ran, the two per-class lists its random subset
draws from are cut to the folders' classes (10 for Fashion-MNIST); the model heads stay 200-way.
Its real-data recipe is then `REAL_DATA_TRAINING_CONFIG['TinyImageNet-<model>']`, present for
ConvNet-4-BN and ResNet-18-BN only. The teacher (`teacher_dir/TinyImageNet/<name>/ckpt_best.pt`,
which mode M loads) is trained here on REAL/train with ddranking's own builder and epoch loop.
docs/ddranking.md says what this run shows and what it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

# ImageNet statistics: what ddranking's TinyImageNet reader normalises the real images with;
# the distilled folder must get the same transform (its ImageFolder takes custom_train_trans)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
ACC_LINE = re.compile(r"^(Syn|Full|Random) data (hard|soft) label acc: (-?[0-9.]+)%$")


class _Tee(io.TextIOBase):
    """Keeps what ddranking prints (to parse its accuracies) and shows it on stderr."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._part = ""

    def write(self, s: str) -> int:
        sys.stderr.write(s)
        text = self._part + s
        *done, self._part = text.split("\n")
        self.lines.extend(done)
        return len(s)


def _floats(value: Any) -> Any:
    """numpy scalars and lists -> JSON floats."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_floats(v) for v in value]
    return float(value)


def _version() -> str:
    from importlib.metadata import version

    return version("ddranking")


# ---- formula: ddranking's own scoring lines on given accuracies ------------------------------


def _stub_metric(cls: type, acc: dict[str, float], num_eval: int, out: Path) -> Any:
    """An instance of `cls` that skips training: its helpers return the given accuracies.

    Only attributes that `compute_metrics` reads are set; nothing in the package changes.
    """
    m = cls.__new__(cls)
    m.ipc, m.num_classes, m.num_eval = 1, 10, num_eval
    m.eval_full_data, m.use_dist, m.rank = True, False, 0
    m.dataset, m.model_name, m.soft_label_mode = "given", "given", "M"
    m.save_path = str(out)

    def hard(image_tensor=None, image_path=None, hard_labels=None, lr=None, mode="syn",
             hyper_param_search=False):  # fmt: skip
        if mode == "real":
            return acc["real_hard"], lr
        return (acc["syn_hard"] if image_path == "syn" else acc["rdm_hard"]), lr

    def soft(image_tensor=None, image_path=None, soft_labels=None, lr=None,
             hyper_param_search=False):  # fmt: skip
        return (acc["syn_any"] if image_path == "syn" else acc["rdm_any"]), lr

    m._compute_hard_label_metrics_helper = hard
    m._compute_soft_label_metrics_helper = soft
    m._get_random_data_helper = lambda eval_iter: ("rdm", None, None)
    return m


def formula(args: argparse.Namespace) -> dict[str, Any]:
    """`LabelRobustScoreSoft.compute_metrics` per weight, on the accuracies as given (percent,
    what its evaluator feeds it) and divided by 100 (fractions, what its README's [0, 1]
    normalisation assumes); then `LabelRobustScoreHard.compute_metrics` once."""
    from ddranking.metrics import LabelRobustScoreHard, LabelRobustScoreSoft

    given = {"real_hard": args.real_hard, "syn_hard": args.syn_hard, "syn_any": args.syn_any,
             "rdm_any": args.rdm_any, "rdm_hard": args.rdm_hard}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for weight in args.weight:
        for scale in (1.0, 0.01):
            acc = {k: v * scale for k, v in given.items()}
            soft = _stub_metric(LabelRobustScoreSoft, acc, args.num_eval, out / "soft.csv")
            scores = soft.compute_metrics(image_path="syn", lrs_lambda=weight)
            runs.append({"weight": weight, "scale": scale, "scores": _floats(scores)})
    result: dict[str, Any] = {"ddranking": _version(), "accuracies": given, "soft": runs}
    # the hard-label class scores IOR with hard labels: syn-hard minus rdm-hard
    hard = _stub_metric(LabelRobustScoreHard, given, args.num_eval, out / "hard.csv")
    try:
        scores = hard.compute_metrics(image_path="syn", lrs_lambda=args.weight[0])
        result["hard"] = _floats(scores)
    except ValueError as err:  # 0.2.0: see docs/ddranking.md, "its hard-label evaluator"
        result["hard_error"] = f"{type(err).__name__}: {err}"
    return result


# ---- lrs: its evaluator on an exported folder ------------------------------------------------

TINY_IMAGENET_CLASSES = 200  # the head size ddranking's TinyImageNet reader gives every model


def _narrow_to_folder_classes(metric: Any) -> int:
    """Its random subset draws IPC images from each of the reader's 200 classes (and fails on
    an empty one): keep the per-class lists of the classes the train folder has."""
    n = len(metric.dst_train.classes)
    metric.class_to_indices = metric.class_to_indices[:n]
    metric.class_to_samples = metric.class_to_samples[:n]
    return n


def train_teacher(args: argparse.Namespace, trans: Any, out: Path) -> dict[str, Any]:
    """The teacher its soft-label mode M needs: `teacher_dir/TinyImageNet/<name>/ckpt_best.pt`,
    here trained on REAL/train with the package's own model builder and training epoch."""
    import torch
    from ddranking.utils import build_model, get_optimizer, train_one_epoch, validate
    from torch.utils.data import DataLoader
    from torchvision import datasets

    im_size = (args.im_size, args.im_size)
    torch.manual_seed(0)  # its compute_metrics reseeds from the clock; the teacher need not
    model = build_model(args.teacher, num_classes=TINY_IMAGENET_CLASSES, im_size=im_size,
                        device=args.device)  # fmt: skip
    train = datasets.ImageFolder(str(args.real / "train"), transform=trans)
    val = datasets.ImageFolder(str(args.real / "val"), transform=trans)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    opt = get_optimizer("adam", model, 1e-3, weight_decay=0.0)
    for epoch in range(args.teacher_epochs):
        train_one_epoch(epoch, model, loader, torch.nn.CrossEntropyLoss(), opt, device=args.device)
    acc = validate(model, DataLoader(val, batch_size=256), device=args.device)
    path = out / "teachers" / "TinyImageNet" / args.teacher / "ckpt_best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"name": args.teacher, "epochs": args.teacher_epochs, "val_acc": float(acc)}


def lrs(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from ddranking.metrics import LabelRobustScoreSoft
    from torchvision import transforms

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trans = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    settings = {
        "dataset": "TinyImageNet", "real_data_path": str(args.real), "ipc": args.ipc,
        "model_name": args.model, "soft_label_criterion": "sce",
        "loss_fn_kwargs": {"temperature": 1.0, "scale_loss": False}, "soft_label_mode": "M",
        "data_aug_func": args.aug, "aug_params": {"beta": 1.0}, "optimizer": "sgd",
        "lr_scheduler": "cosine", "num_eval": args.num_eval, "im_size": (args.im_size,) * 2,
        "num_epochs": args.epochs, "real_batch_size": args.real_batch,
        "syn_batch_size": args.syn_batch, "num_workers": 0, "device": args.device,
        "save_path": str(out / "obj_scores.csv"), "random_data_format": "image",
        "random_data_path": str(out / "random"), "eval_full_data": True,
        "teacher_dir": str(out / "teachers"), "teacher_model_names": [args.teacher],
    }  # fmt: skip
    tee = _Tee()
    t0 = time.time()
    with contextlib.redirect_stdout(tee):
        teacher = train_teacher(args, trans, out)
        metric = LabelRobustScoreSoft(custom_train_trans=trans, **settings)
        classes = _narrow_to_folder_classes(metric)
        t1 = time.time()
        scores = metric.compute_metrics(image_path=str(args.syn), syn_lr=args.syn_lr,
                                        lrs_lambda=args.weight)  # fmt: skip
    names = {"syn hard": "syn_hard", "full hard": "real_hard", "syn soft": "syn_any",
             "random soft": "rdm_any"}  # fmt: skip
    evals: list[dict[str, float]] = []
    for line in tee.lines:
        hit = ACC_LINE.match(line.strip())
        if hit:
            key = names[f"{hit.group(1).lower()} {hit.group(2)}"]
            if key == "syn_hard":
                evals.append({})
            evals[-1][key] = float(hit.group(3))
    return {
        "ddranking": _version(), "metric": "LabelRobustScoreSoft", "classes": classes,
        "settings": {k: v for k, v in settings.items() if k not in ("aug_params", "loss_fn_kwargs")},
        "syn_lr": args.syn_lr, "weight": args.weight, "teacher": teacher, "evals": evals,
        "scores": _floats(scores), "csv": _read_csv(out / "obj_scores.csv"),
        "seconds": {"teacher_and_setup": round(t1 - t0, 1), "compute_metrics": round(time.time() - t1, 1)},
    }  # fmt: skip


def _read_csv(path: Path) -> dict[str, list[float]]:
    """The per-evaluation HLR / IOR / LRS it saved (full precision, unlike its log lines)."""
    import pandas as pd

    return _floats(pd.read_csv(path).to_dict(orient="list"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("formula", help="ddranking's compute_metrics on given accuracies (%%)")
    for name in ("real-hard", "syn-hard", "syn-any", "rdm-any"):
        f.add_argument(f"--{name}", type=float, required=True)
    f.add_argument("--rdm-hard", type=float, default=0.0, help="hard-label class only")
    f.add_argument("--weight", type=float, nargs="+", default=[0.5], help="its lrs_lambda")
    f.add_argument("--num-eval", type=int, default=1)
    f.add_argument("--out", default="ddranking_formula", help="where it writes its CSV")
    e = sub.add_parser("lrs", help="LabelRobustScoreSoft on an ImageFolder export")
    e.add_argument("--real", type=Path, required=True, help="folder with train/ and val/")
    e.add_argument("--syn", type=Path, required=True, help="the exported distilled set")
    e.add_argument("--ipc", type=int, required=True)
    e.add_argument("--model", default="ConvNet-4-BN", help="needs a TinyImageNet-<model> recipe")
    e.add_argument("--epochs", type=int, default=20, help="a multiple of its test interval 20")
    e.add_argument("--syn-lr", type=float, default=None, help="none: its 5-lr search")
    e.add_argument("--num-eval", type=int, default=1)
    e.add_argument("--im-size", type=int, default=32)
    e.add_argument("--teacher", default="MLP", help="any ddranking model name")
    e.add_argument("--teacher-epochs", type=int, default=30)
    e.add_argument("--aug", default="cutmix", help="cutmix | mixup | none")
    e.add_argument("--real-batch", type=int, default=256)
    e.add_argument("--syn-batch", type=int, default=256)
    e.add_argument("--weight", type=float, default=0.5)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=1, help="more spin-waits on a busy box")
    e.add_argument("--out", default="ddranking_out", help="its CSV and random subsets")
    args = p.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = formula(args) if args.cmd == "formula" else lrs(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
