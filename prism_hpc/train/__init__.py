"""Student training and evaluation: losses, lr schedules, EMA, trainer, results tables."""

from prism_hpc.train.losses import ce, kl, mse_gt, soft_ce, student_loss
from prism_hpc.train.schedules import cosine, lr_factor, ssrs, ssrs_continuous
from prism_hpc.train.trainer import (
    StopTraining,
    clear_stop,
    evaluate,
    request_stop,
    student_dir,
    train_student,
)  # fmt: skip

__all__ = [
    "StopTraining", "ce", "clear_stop", "cosine", "evaluate", "kl", "lr_factor", "mse_gt",
    "request_stop", "soft_ce", "ssrs", "ssrs_continuous", "student_dir", "student_loss",
    "train_student",
]  # fmt: skip
