"""The `tracking:` section: where a run's curves go besides its own files.

Experiment trackers are optional and never part of the science: every key defaults to off, so
a config without the section runs exactly as before and imports neither TensorBoard nor W&B.
Names are checked here, at load time, because W&B only refuses a bad project name inside the
task, hours after submission (the task then goes on untracked, with one warning).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from prism_hpc.config.common import Strict

# W&B refuses these in a project name (and names longer than 128 characters)
_PROJECT_FORBIDDEN = set("/\\#?%:")
_PROJECT_MAX = 128
# entities are user or team names: letters, digits, '-' and '_'
_ENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _project_problem(name: str) -> str | None:
    """Why W&B would refuse this project name, or None when it is acceptable."""
    if not name.strip():
        return "is empty"
    if any(not ch.isprintable() for ch in name):
        return "must be one line of printable characters"
    if len(name) > _PROJECT_MAX:
        return f"has {len(name)} characters, W&B allows at most {_PROJECT_MAX}"
    bad = sorted(_PROJECT_FORBIDDEN & set(name))
    if bad:
        return f"contains {''.join(bad)!r}; W&B forbids any of {''.join(sorted(_PROJECT_FORBIDDEN))!r}"
    return None


class TrackingConfig(Strict):
    """Which trackers a task writes to. The stages log at their own cadence
    (`recover.log_every`, `students.log_every`), so there is no separate interval here."""

    # event files under RUN/tracking/tensorboard/<stage>/<item>/ (`tensorboard --logdir`)
    tensorboard: bool = False
    # off | offline (files under RUN/tracking/wandb, upload later with `prism-hpc sync RUN`)
    # | online (needs internet on the compute nodes and WANDB_API_KEY in the environment)
    wandb: Literal["off", "offline", "online"] = "off"
    # None: W&B's own choice ($WANDB_PROJECT, else its default project)
    project: str | None = None
    # None: the API key's default entity ($WANDB_ENTITY is honoured by W&B too)
    entity: str | None = None

    @field_validator("project")
    @classmethod
    def _project_legal(cls, value: str | None) -> str | None:
        if value is not None and (problem := _project_problem(value)):
            raise ValueError(f"W&B project name {value!r} {problem}")
        return value

    @field_validator("entity")
    @classmethod
    def _entity_legal(cls, value: str | None) -> str | None:
        if value is not None and not _ENTITY.match(value):
            raise ValueError(
                f"W&B entity {value!r} must be one word of letters, digits, '-' or '_' "
                "(at most 64 characters)"
            )
        return value

    @property
    def enabled(self) -> bool:
        """True when any tracker is on: the stages skip building one otherwise."""
        return self.tensorboard or self.wandb != "off"
