"""Per-stage compute resources (SLURM options and local concurrency) and the devices `plan` prices."""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator

from prism_hpc.config.common import Strict

DEVICE_NAMES = ("v100", "a100-40", "a100-80", "h100", "h200", "l40s", "rtx4090", "cpu")

SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "ALRM", "URG")
SIGNAL_SPEC = re.compile(r"(?:SIG)?(?:" + "|".join(SIGNALS) + r")@([1-9]\d{0,4})")


class StageResources(Strict):
    """SLURM and local resources of one stage; unset fields inherit `resources.default`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    cpus_per_task: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)
    setup: list[str] | None = None
    sbatch_extra: dict[str, str | int | bool] | None = None
    array_parallelism: int | None = Field(None, ge=1)
    max_array_size: int | None = Field(None, ge=1)  # None: read from `scontrol show config`
    concurrency: int | None = Field(None, ge=1)  # local backend: items run at once
    # Warning signal SIG@SECONDS before the time limit (sbatch --signal; the delay is capped at
    # a fifth of time_min). Checkpointable stages (training) requeue on it and resume.
    signal: str | None = None
    # device kind `plan` prices the stage on (DEVICE_NAMES); None: cpu without GPUs, else the
    # estimate assumes a100-80 and says so. Requests nothing from SLURM (use constraint/gres).
    gpu: str | None = None

    @field_validator("gpu")
    @classmethod
    def _gpu_known(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in DEVICE_NAMES:
            raise ValueError(f"unknown device {v!r} (known: {', '.join(DEVICE_NAMES)})")
        return v.lower() if v is not None else v

    @field_validator("signal")
    @classmethod
    def _signal_spec(cls, v: str | None) -> str | None:
        m = SIGNAL_SPEC.fullmatch(v) if v is not None else None
        if v is not None and (m is None or int(m.group(1)) > 65535):
            raise ValueError(
                f"{v!r}: expected SIGNAL@SECONDS, e.g. USR2@90 (signals: {', '.join(SIGNALS)}; "
                "seconds 1-65535)"
            )
        return v

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        """Values go into `#SBATCH --key=value` lines (shell-quoted); a newline would end the
        comment and start a shell line, so control characters are refused outright."""
        if v is not None and any(ord(ch) < 32 for ch in v):
            raise ValueError("must be a single line without control characters")
        return v

    @field_validator("setup")
    @classmethod
    def _setup_words(cls, v: list[str] | None) -> list[str] | None:
        import shlex

        for line in v or []:
            if any(ord(ch) < 32 for ch in line):
                raise ValueError("setup lines must be single lines")
            try:
                shlex.split(line)
            except ValueError as err:
                raise ValueError(f"setup line {line!r}: {err}") from None
        return v

    @field_validator("sbatch_extra")
    @classmethod
    def _extra_one_line(cls, v):
        for key, value in (v or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
                raise ValueError(f"sbatch option name {key!r} must look like 'mail_type'")
            if any(ord(ch) < 32 for ch in str(value)):
                raise ValueError(f"value of {key!r} must be a single line")
        return v


RESOURCE_DEFAULTS = StageResources(
    time_min=60,
    mem_gb=8,
    cpus_per_task=1,
    gpus_per_node=0,
    tasks_per_node=1,
    setup=[],
    sbatch_extra={},
    concurrency=1,
    signal="USR2@90",
)


class CanaryResources(StageResources):
    """The canary job (SLURM): a stage's resources, overridden where set here; time_min
    defaults to min(the stage's, 20)."""

    enabled: bool = True


class Resources(Strict):
    """`default`, `canary`, then one block per stage, keyed by the stage's name.

    The stage blocks are a mapping rather than fixed fields because the stages are the
    registry's, not this module's: a plug-in pipeline brings its own. Their names are checked
    against the registry where it is known (`unknown_stages`, called by `plan` and `submit`).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, StageResources] = Field(init=False)

    default: StageResources = Field(default_factory=StageResources)
    canary: CanaryResources = Field(default_factory=CanaryResources)

    @property
    def stages(self) -> dict[str, StageResources]:
        """The per-stage blocks the config wrote, by stage name."""
        return dict(self.__pydantic_extra__ or {})

    def unknown_stages(self, stage_names: list[str]) -> list[str]:
        """Stage blocks that name no stage of the pipeline (a misspelt `recovr:` would
        otherwise be ignored silently and the stage would run on the defaults)."""
        return [name for name in self.stages if name not in stage_names]

    def for_stage(self, stage: str) -> StageResources:
        """Stage value, else `default`, else the built-in default (a stage without a block of
        its own takes `default`)."""
        merged = RESOURCE_DEFAULTS.model_dump()
        for layer in (self.default, self.stages.get(stage, self.default)):
            merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return StageResources(**merged)
