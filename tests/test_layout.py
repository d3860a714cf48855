"""The run directory's layout: `store/layout.py` is the one place that spells its names.

The literal paths below are a contract with run directories already on disk (a changed name
would strand their files), and the scan makes sure no other module joins a run-directory name
onto a path by itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from prism_hpc.store import layout
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import Item, Stage

PACKAGE = Path(__file__).resolve().parent.parent / "prism_hpc"
LAYOUT = Path("store") / "layout.py"
RUN = Path("/runs/x/20260101-000000")

PINNED = [
    (layout.config_file(RUN), "config.yaml"),
    (layout.input_config_file(RUN), "config.input.yaml"),
    (layout.provenance_file(RUN), "provenance.json"),
    (layout.state_file(RUN), "state.json"),
    (layout.plan_file(RUN), "plan.json"),
    (layout.lock_file(RUN), ".lock"),
    (layout.stage_marker(RUN, "report", "report"), "report/report.done"),
    (layout.data_index(RUN, "train"), "data_index/train.json.gz"),
    (layout.stage_script(layout.slurm_scripts_dir(RUN), "recover", ".1"), "slurm/recover.1.sbatch"),
    (layout.eval_array_script(layout.slurm_scripts_dir(RUN)), "slurm/eval_array.sbatch"),
    (layout.task_log(RUN, "train", "resnet18-seed0", 1), "logs/train/resnet18-seed0.rank1.log"),
    (layout.sbatch_log(RUN, "recover"), "logs/recover/sbatch_%A_%a.log"),
    (layout.sbatch_log(RUN, "train", prefix="eval"), "logs/train/eval_%A_%a.log"),
    (layout.submitit_logs(RUN, "recover", 2, 0), "logs/recover/attempt2_array0"),
    (layout.canary_marker(RUN, 1), "canary/attempt1/canary.done"),
    (layout.canary_run(layout.canary_dir(RUN, 1)), "canary/attempt1/run"),
    (layout.canary_logs(RUN, 1, 0), "logs/canary/attempt1_0"),
    (layout.teacher_weights(RUN, "r18"), "teachers/r18.pt"),
    (layout.teacher_info(RUN, "r18"), "teachers/r18.json"),
    (layout.teacher_marker(RUN, "r18"), "teachers/r18.done"),
    (layout.statistics_file(RUN, "r18"), "statistics/r18.pt"),
    (layout.statistics_marker(RUN, "r18.a1"), "statistics/r18.a1.done"),
    (layout.rank_order(RUN), "rank/order.npz"),
    (layout.rank_marker(RUN), "rank/order.done"),
    (layout.recover_shard(RUN, 3), "recover/slice_00003.h5"),
    (layout.slice_partial_dir(RUN, 3), "recover/partial/slice_00003"),
    (
        layout.partial_chunk(layout.recover_partial_dir(RUN), 3, 7),
        "recover/partial/slice_00003/chunk_0007.npz",
    ),
    (layout.distilled_file(RUN), "distilled.h5"),
    (layout.distilled_marker(RUN), "distilled.done"),
    (layout.softlabel_chunk(RUN, 0, 2), "relabel/epochs_0000-0001.h5"),
    (layout.softlabel_marker(RUN, 2, 4), "relabel/epochs_0002-0003.done"),
    (layout.student_dir(RUN, "timm:vit/b", 2), "students/timm_vit_b/seed2"),
    (layout.student_dir(RUN, "resnet18", 0) / layout.CKPT_NAME, "students/resnet18/seed0/ckpt.pt"),
    (layout.results_md(RUN), "results.md"),
    (layout.results_csv(RUN), "results.csv"),
    (layout.report_md(RUN), "report.md"),
    (layout.report_json(RUN), "report.json"),
    (layout.figures_dir(RUN), "figures"),
    (layout.diversity_json(RUN), "diversity.json"),
    (layout.diversity_features(RUN), "diversity_features.npz"),
    (
        layout.tensorboard_dir(RUN, "recover", "slice_00000"),
        "tracking/tensorboard/recover/slice_00000",
    ),
    (layout.wandb_offline_dir(RUN), "tracking/wandb/wandb"),
]


@pytest.mark.parametrize(("path", "literal"), PINNED, ids=[lit for _, lit in PINNED])
def test_the_layout_is_the_documented_one(path, literal):
    assert path == RUN / literal


def test_names_and_keys_pinned():
    assert layout.softlabel_key(0, 5) == "epochs_0000-0004"
    assert (layout.CKPT_NAME, layout.METRICS_NAME, layout.DONE_NAME) == (
        "ckpt.pt", "metrics.json", ".done",
    )  # fmt: skip
    assert (layout.PROGRESS_NAME, layout.EVAL_NAME) == ("progress.json", "eval.json")


def test_run_dir_properties_come_from_the_layout():
    rd = RunDir(RUN)
    assert (rd.config, rd.plan, rd.state, rd.logs, rd.slurm) == (
        layout.config_file(RUN), layout.plan_file(RUN), layout.state_file(RUN),
        layout.logs_dir(RUN), layout.slurm_scripts_dir(RUN),
    )  # fmt: skip
    assert (rd.teachers, rd.recover, rd.distilled, rd.relabel, rd.students, rd.figures) == (
        RUN / "teachers", RUN / "recover", RUN / "distilled.h5", RUN / "relabel",
        RUN / "students", RUN / "figures",
    )  # fmt: skip


def test_the_default_stage_marker_matches_the_layout():
    """`workflow` sits below `store` and cannot import it: its default must agree."""
    stage = Stage()
    stage.name = "report"
    item = Item("report", 0, "report")
    assert stage.marker_path(RUN, item) == layout.stage_marker(RUN, "report", "report")


def test_stages_put_their_files_where_the_layout_says():
    from prism_hpc.stages import registry

    stages = {s.name: s for s in registry().stages}
    one = {"squeeze": Item("squeeze", 0, "r18", {"teacher": "r18"}),
           "statistics": Item("statistics", 0, "statistics_r18", {"teacher": "r18"}),
           "rank": Item("rank", 0, "order", {}),
           "recover": Item("recover", 0, "slices_00002-00003", {"slices": [2, 3]}),
           "collect": Item("collect", 0, "distilled", {}),
           "relabel": Item("relabel", 0, "epochs_0000-0001", {"epochs": [0, 2]}),
           "train": Item("train", 0, "resnet18-seed1", {"arch": "resnet18", "seed": 1}),
           "report": Item("report", 0, "report", {})}  # fmt: skip
    markers = {name: stages[name].markers(RUN, item) for name, item in one.items()}
    assert markers == {
        "squeeze": [RUN / "teachers/r18.done"],
        "statistics": [RUN / "statistics/r18.done"],
        "rank": [RUN / "rank/order.done"],
        "recover": [RUN / "recover/slice_00002.done", RUN / "recover/slice_00003.done"],
        "collect": [RUN / "distilled.done"],
        "relabel": [RUN / "relabel/epochs_0000-0001.done"],
        "train": [RUN / "students/resnet18/seed1/.done"],
        "report": [RUN / "report/report.done"],
    }
    assert stages["recover"].restart_state(RUN, one["recover"]) == [
        RUN / "recover/partial/slice_00002", RUN / "recover/partial/slice_00003",
    ]  # fmt: skip


def test_the_layout_imports_nothing_heavy():
    """`status` and `plan` read the layout: it must stay plain pathlib."""
    tree = ast.parse((PACKAGE / LAYOUT).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "pathlib"}


# ------------------------------------------------------------ nobody else spells the layout
# folders and files of a run directory: joined onto a path anywhere but store/layout.py, they
# are a second copy of the layout
RUN_DIR_NAMES = {
    "canary", "data_index", "figures", "logs", "partial", "rank", "recover", "relabel",
    "slurm", "statistics", "students", "teachers", "tracking",
    ".lock", "config.input.yaml", "config.yaml", "distilled.done", "distilled.h5",
    "diversity.json", "diversity_features.npz", "plan.json", "provenance.json", "report.json",
    "report.md", "results.csv", "results.md", "state.json",
}  # fmt: skip
PATH_METHODS = {"joinpath", "glob", "rglob", "iglob"}
PATH_TYPES = {"Path", "PurePath", "PosixPath"}


def _leading_name(node: ast.AST) -> str | None:
    """The first path component a string (or an f-string's leading text) spells, if any."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split("/")[0]
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and "/" in str(head.value):
            return str(head.value).split("/")[0]
    return None


def _path_parts(node: ast.AST) -> list[ast.AST]:
    """The operands of `node` that become path components: `a / b`, `p.joinpath(b)`,
    `p.glob(b)`, `Path(a, b)`, `os.path.join(a, b)`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return [node.left, node.right]
    if not isinstance(node, ast.Call):
        return []
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in PATH_METHODS:
        return list(node.args)
    if isinstance(func, ast.Attribute) and func.attr == "join":  # os.path.join, not str.join
        is_os_path = isinstance(func.value, ast.Attribute) and func.value.attr == "path"
        return list(node.args[1:]) if is_os_path else []
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return list(node.args[1:]) if name in PATH_TYPES else []


def literal_run_paths(package: Path) -> list[str]:
    """Every place outside the layout module that joins a run-directory name onto a path."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel == LAYOUT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for part in _path_parts(node):
                name = _leading_name(part)
                if name in RUN_DIR_NAMES:
                    found.append((str(rel), part.lineno, part.col_offset, name))
    return [f"{rel}:{line}: {name!r}" for rel, line, _, name in sorted(found)]


def test_no_module_but_the_layout_spells_a_run_directory_path():
    assert literal_run_paths(PACKAGE) == []


def test_the_scan_sees_a_literal_run_path_and_nothing_else(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "stages" / "x.py").write_text(
        '"""Writes recover/slice_00000.h5."""\n'
        "import os\nfrom pathlib import Path\n"
        "def f(run_dir, cfg, s, name):\n"
        '    a = Path(run_dir) / "recover" / f"slice_{s:05d}.h5"\n'
        '    b = run_dir / f"relabel/{name}.h5"\n'
        '    c = sorted(Path(run_dir).glob(f"students/*/seed*/{name}"))\n'
        '    d = (Path(run_dir, "logs"), os.path.join(run_dir, "teachers"),\n'
        '         run_dir.joinpath(".lock"))\n'
        '    e = run_dir / "report.md"\n'
        '    ok = (cfg.resources.for_stage("recover"), {"recover": 1}, run_dir / name,\n'
        '          "/".join(["a", "logs"]))\n'
        '    return a, b, c, d, e, ok, f"figures/{name}", Path("recover")\n'
    )  # fmt: skip
    (tmp_path / "store" / "layout.py").write_text('def f(run):\n    return run / "recover"\n')
    assert literal_run_paths(tmp_path) == [
        "stages/x.py:5: 'recover'", "stages/x.py:6: 'relabel'", "stages/x.py:7: 'students'",
        "stages/x.py:8: 'logs'", "stages/x.py:8: 'teachers'", "stages/x.py:9: '.lock'",
        "stages/x.py:10: 'report.md'",
    ]  # fmt: skip
