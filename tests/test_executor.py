"""The executor seam: the registry behind `backend` (names, `auto`, one-line refusals), a toy
executor added in a test running a toy pipeline, the executors' slot logic that the estimates
use, and a toy stage whose own policy reaches the SLURM submission (no PRISM code here)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from prism_hpc.config.load import config_from_dict
from prism_hpc.config.schema import StageResources
from prism_hpc.errors import UserError
from prism_hpc.hpc import executor as executor_module
from prism_hpc.hpc.executor import (
    Executor,
    Run,
    backend_names,
    check_backend_name,
    executor_class,
    executor_named,
    register_executor,
)  # fmt: skip
from prism_hpc.hpc.plan import make_plan, write_plan
from prism_hpc.store.atomic import write_marker
from prism_hpc.store.rundir import new_run_dir
from prism_hpc.workflow import Capacity, Item, Stage, StageRegistry, capacity, estimating
from tests.conftest import TINY
from tests.helpers import write_stub

TOY_REF = "tests.test_executor:toy_registry"


class Make(Stage):
    """Two items that write a marker each, and say how long they took (for the estimate)."""

    name = "make"

    def items(self, cfg) -> list[Item]:
        return [Item(self.name, i, f"part{i}") for i in range(2)]

    def run(self, cfg, item: Item, env) -> None:
        write_marker(self.marker_path(env.run_dir, item), {"key": item.key})

    def estimate(self, cfg) -> dict:
        res = cfg.resources.for_stage(self.name)
        return {"slots": capacity().slots(res, 2), "by": capacity().name}


class Gate(Stage):
    """Must run when some `make` item failed, to name what is missing: its own policy."""

    name = "gate"
    depends_on = ("make",)
    runs_after_failed_dependencies = True
    checkpointable = True
    serves_eval_array = True
    primary_output = True

    def items(self, cfg) -> list[Item]:
        return [Item(self.name, 0, "gate")]

    def run(self, cfg, item: Item, env) -> None:
        write_marker(self.marker_path(env.run_dir, item), {})
        (Path(env.run_dir) / "gate.txt").write_text("through")

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("gate file", Path(run_dir) / "gate.txt")]

    def progress(self, run_dir: Path) -> dict:
        return {"gate_seen": (Path(run_dir) / "gate.txt").exists()}

    def progress_lines(self, fields: dict) -> list[str]:
        return [f"  gate passed: {fields['gate_seen']}"]


class After(Stage):
    name = "after"
    depends_on = ("gate",)

    def items(self, cfg) -> list[Item]:
        return [Item(self.name, 0, "after")]

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("made", Path(run_dir) / "make")]


def toy_registry() -> StageRegistry:
    return StageRegistry((Make(), Gate(), After()), TOY_REF)


def _toy_run(tmp_path: Path, **resources):
    data = dict(TINY, name="toy", run_root=str(tmp_path))
    data["resources"] = {"default": {"time_min": 30, **resources}}
    cfg = config_from_dict(data)
    return cfg, new_run_dir(cfg, tmp_path / "run", data)


@pytest.fixture
def own_registry(monkeypatch):
    """The executor registry, with what a test registers removed afterwards."""
    executor_module._builtin()
    monkeypatch.setattr(executor_module, "EXECUTORS", dict(executor_module.EXECUTORS))


# ------------------------------------------------------------------------ names and auto
def test_backend_names_come_from_the_registry():
    assert backend_names() == ["auto", "local", "slurm", "debug"]
    with pytest.raises(UserError, match=r"^backend 'x': expected one of auto, local, slurm, debug$"):
        executor_class("x")
    with pytest.raises(UserError, match=re.escape("c.yaml: backend = 'x': Input should be one")):
        check_backend_name("x", config_file="c.yaml")
    check_backend_name("debug")


def test_auto_is_slurm_only_when_sbatch_is_found_and_sinfo_answers(monkeypatch):
    from prism_hpc.hpc.backends.slurm import executor as slurm

    found = {"sbatch": "/usr/bin/sbatch"}
    monkeypatch.setattr(slurm.shutil, "which", lambda name: found.get(name))
    monkeypatch.setattr(slurm, "is_slurm_available", lambda: True)
    assert executor_class("auto").name == "slurm"
    monkeypatch.setattr(slurm, "is_slurm_available", lambda: False)  # sbatch, no controller
    assert executor_class("auto").name == "local"
    found.clear()
    assert executor_class("auto").name == "local"
    with pytest.raises(UserError, match="backend slurm: `sbatch` not found on PATH"):
        executor_named("slurm")
    assert executor_class("slurm").name == "slurm"  # planning for SLURM needs no sbatch


# ------------------------------------------------------------------------ a toy executor
def test_a_toy_executor_registered_here_runs_a_toy_pipeline(tmp_path, own_registry):
    @register_executor
    class Reversed(Executor):
        """Every item in this process, the last item of a stage first."""

        name = "reversed"

        def launch(self, run: Run) -> None:
            from prism_hpc.hpc.task import run_item

            plans = self.plan(run.cfg, run.registry, run.only)
            write_plan(run.rd.plan, plans, run.registry.ref)
            for plan in plans:
                for item in reversed(plan.items):
                    run_item(str(run.rd.root), plan.stage.name, item.index,
                             registry=run.registry)  # fmt: skip
            run.rd.append_state({"event": "reversed-run"})

        def slots(self, res: StageResources, n_tasks: int) -> int:
            return 7

        def threads(self, res: StageResources) -> int:
            return 1

    assert backend_names()[-1] == "reversed"
    cfg, rd = _toy_run(tmp_path)
    registry = toy_registry()
    executor = executor_named("reversed")
    plans = executor.plan(cfg, registry, ("make", "gate"))
    assert [p.stage.name for p in plans] == ["make", "gate"]
    assert plans[0].estimate == {"slots": 7, "by": "reversed"}  # priced on this executor
    executor.launch(Run(rd, cfg, registry, ("make", "gate")))
    assert (rd.root / "gate.txt").read_text() == "through"
    assert all(Make().is_done(rd.root, i) for i in Make().items(cfg))
    assert rd.read_state()[-1]["event"] == "reversed-run"
    with pytest.raises(UserError, match="expected one of auto, local, slurm, debug, reversed"):
        executor_class("nope")


def test_local_executor_prints_what_the_stages_offer_primary_first(tmp_path, capsys):
    cfg, rd = _toy_run(tmp_path)
    registry = toy_registry()
    executor_named("local").launch(Run(rd, cfg, registry, ("make", "gate")))
    out = capsys.readouterr().out
    lines = out[out.index("outputs:"):].splitlines()
    assert lines[1].split() == ["gate", "file", str(rd.root / "gate.txt")]
    assert lines[2].split() == ["made", str(rd.root / "make")]
    from prism_hpc.hpc.status import print_status

    rows = print_status(rd.root, registry)
    assert next(r for r in rows if r["stage"] == "gate")["gate_seen"] is True
    assert "  gate passed: True" in capsys.readouterr().out


# ------------------------------------------------------------------------ slot logic
def test_the_executors_slot_logic_is_what_estimates_see(monkeypatch):
    from prism_hpc.hpc.backends import local

    monkeypatch.setattr(local, "machine_cores", lambda: 8)
    res = StageResources(tasks_per_node=2, concurrency=3, cpus_per_task=5)
    assert (executor_class("local")().slots(res, 10), executor_class("local")().threads(res)) == (
        3, 1,
    )  # fmt: skip
    assert executor_class("debug")().slots(res, 10) == 1
    assert executor_class("debug")().threads(res) == 4  # 8 cores, 2 ranks
    gpu = StageResources(tasks_per_node=2, concurrency=3, gpus_per_node=2)
    assert executor_class("local")().slots(gpu, 10) == 3  # the GPUs are assumed present
    slurm = executor_class("slurm")()
    assert slurm.threads(res) == 5
    capped = StageResources(array_parallelism=4, max_array_size=10)
    assert slurm.slots(capped, 25) == 4 + 4 + 4  # three arrays, %4 each
    assert capacity().slots(res, 10) == 1  # no executor planning: one task at a time
    with estimating(slurm):
        assert capacity() is slurm
    assert type(capacity()) is Capacity


def test_plans_without_an_executor_have_no_estimates(tmp_path):
    cfg, _ = _toy_run(tmp_path)
    assert [p.estimate for p in make_plan(cfg, list(toy_registry().stages))] == [{}, {}, {}]


# ------------------------------------------------------------------------ policy -> SLURM
def test_a_toy_stages_policy_reaches_the_sbatch_dependency(tmp_path, monkeypatch):
    """The gate waits `afterany` because it says so, `after` waits `afterok`; the gate's
    tasks are checkpointable and it is rendered as eval_array.sbatch, all without `hpc`
    knowing its name."""
    log = tmp_path / "sbatch.log"
    count = tmp_path / "count"
    stub = tmp_path / "bin"
    write_stub(stub, "sbatch", (
        f'n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n'
        f'echo "$n $(grep -o -e "--job-name=[^ ]*" -e "--dependency=[^ ]*" "$1" | '
        f'tr "\\n" " ")" >> {log}\n'
        'echo "Submitted batch job $n"\n'
    ))  # fmt: skip
    write_stub(stub, "scontrol", 'echo "MaxArraySize = 1001"\n')
    write_stub(stub, "srun", "exit 0\n")
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    cfg, rd = _toy_run(tmp_path)
    executor_named("slurm").launch(Run(rd, cfg, toy_registry()))
    calls = {c.split()[0]: set(c.split()[1:]) for c in log.read_text().splitlines()}
    assert calls == {
        "1": {"--job-name=prism-toy-make"},
        "2": {"--job-name=prism-toy-gate", "--dependency=afterany:1"},
        "3": {"--job-name=prism-toy-after", "--dependency=afterok:2"},
    }
    events = [e for e in json.loads(rd.state.read_text()) if e["event"] == "submit"]
    assert [e["dependency"] for e in events] == [None, "afterany:1", "afterok:2"]
    assert (rd.slurm / "eval_array.sbatch").is_file()  # the gate serves the eval array
    from prism_hpc.hpc.task import CheckpointableRunItem, task_function

    assert isinstance(task_function(Gate()), CheckpointableRunItem)
    assert not isinstance(task_function(After()), CheckpointableRunItem)
