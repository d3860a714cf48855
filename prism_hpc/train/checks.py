"""Student settings that cannot train, refused when the train stage is planned (light: no
torch, so planning and `status` stay fast)."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError

SOFT_LOSSES = ("mse_gt", "mae_gt", "kl", "soft_ce")


def check_train_config(cfg: Config) -> None:
    """Combinations that cannot train (raised at plan time by the stage)."""
    st, mode = cfg.students, cfg.relabel.mode
    if mode == "none" and st.loss in SOFT_LOSSES:
        raise UserError(
            f"students.loss = {st.loss} needs soft labels, but relabel.mode = none gives none "
            "(use students.loss: ce for the hard-label baseline)"
        )
    if not st.archs or not st.seeds:
        raise UserError("students.archs and students.seeds must not be empty")


def student_pairs(cfg: Config) -> list[tuple[str, int]]:
    """(architecture, seed) of every student, in item order (the train stage and the
    evaluation array both number students this way)."""
    return [(a, s) for a in cfg.students.archs for s in cfg.students.seeds]
