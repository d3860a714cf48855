"""From a config file to a launched run: what `submit` does, shared by `sweep`.

The order matters for "nothing is lost": every check that can refuse (config, backend name,
data, images) runs before the run directory exists, and the run directory appears complete
or not at all (`store.rundir.new_run_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import StageRegistry

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SubmitRequest:
    """What the user asked for: a new run from `config`, or `resume` of an existing one."""

    config: Path | None
    overrides: tuple[str, ...] = ()
    backend: str | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    stages: tuple[str, ...] | None = None
    canary: bool = True  # SLURM: a canary job before the arrays (hpc/canary.py)


def check_resource_stages(cfg: Config, registry: StageRegistry, config: Path) -> None:
    """`resources.<name>` must name a stage of the pipeline (or be default/canary)."""
    unknown = cfg.resources.unknown_stages(registry.names)
    if unknown:
        raise UserError(
            f"{config}: unknown key 'resources.{unknown[0]}' (not a stage; stages: "
            f"{', '.join(registry.names)}; also default, canary)"
        )


def prepare(
    config: Path, overrides: list[str] | tuple[str, ...], require_data: bool,
    registry: StageRegistry | None = None,
):  # fmt: skip
    """Load, override and check a config; returns (config, raw input, warnings)."""
    from prism_hpc.config.load import load_config
    from prism_hpc.hpc.executor import check_backend_name
    from prism_hpc.stages import registry as default_registry
    from prism_hpc.stages.preflight import preflight

    cfg, raw = load_config(config, list(overrides))
    check_backend_name(cfg.backend, config_file=config)  # the executors know the names
    check_resource_stages(cfg, registry or default_registry(), config)  # so do the stages
    try:
        warnings = preflight(cfg, require_data=require_data)
    except UserError as err:
        raise UserError(f"{config}: {err}") from None  # name the file for every bad input
    return cfg, raw, warnings


def _new_run(cfg: Config, raw: dict, run_dir: Path | None, echo: Echo) -> RunDir:
    from prism_hpc.data.listing import read_listing
    from prism_hpc.data.sources import write_data_index
    from prism_hpc.stages.preflight import check_images
    from prism_hpc.store.rundir import new_run_dir

    indexed: list[Path] = []

    def index_data(staged: RunDir) -> None:  # listed once, inside the run being built
        written = write_data_index(cfg.data, staged.root)
        indexed.extend(p.relative_to(staged.root) for p in written)
        for listed in map(read_listing, written):
            if listed.skipped:
                echo(f"data: {listed.skipped} hidden or non-image entr(ies) skipped "
                     f"in {listed.folder}")  # fmt: skip
        check_images(cfg, staged.root)  # broken JPEGs named now, not in task 37

    rd = new_run_dir(cfg, run_dir, raw, build=index_data)
    for rel in indexed:
        echo(f"data index: {rd.root / rel}")
    return rd


def submit_run(
    req: SubmitRequest, registry: StageRegistry, echo: Echo, warn: Echo | None = None
) -> RunDir:
    """Create (or reopen with `resume`) the run and hand it to its executor. Returns once
    the stages ran (local) or were submitted (SLURM). Config warnings go to `warn` (the
    terminal's stderr for the CLI), everything else to `echo`."""
    from prism_hpc.hpc.executor import Run, executor_named
    from prism_hpc.store.atomic import remove_stale_tmp
    from prism_hpc.store.rundir import RunLock, open_run_dir

    only = list(req.stages) if req.stages else None
    registry.select(only)  # a bad --stages fails before anything is made
    if req.resume is not None:
        stored = open_run_dir(req.resume)
        source = req.config if req.config is not None else stored.config
        cfg, _, _ = prepare(source, req.overrides, require_data=False, registry=registry)
        executor = executor_named(req.backend or cfg.backend)
        rd = open_run_dir(req.resume, cfg)
        lock = RunLock(rd).acquire()
        stale = remove_stale_tmp(rd.root)
        if stale:
            echo(f"removed {len(stale)} temp file(s) of killed writers")
    else:
        if req.config is None:
            raise UserError("submit: give a CONFIG file (or --resume RUN_DIR)")
        cfg, raw, warnings = prepare(
            req.config, req.overrides, require_data=True, registry=registry
        )
        for w in warnings:
            (warn or echo)(f"warning: {w}")
        executor = executor_named(req.backend or cfg.backend)  # fails before the run dir exists
        rd = _new_run(cfg, raw, req.run_dir, echo)
        lock = RunLock(rd).acquire()
    echo(f"run dir: {rd.root}")
    try:
        executor.launch(Run(rd, cfg, registry, tuple(only) if only else None, req.canary))
    finally:
        lock.release()
    return rd
