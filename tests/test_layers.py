"""The layer picture of docs/architecture.md, checked on every import in the package (module
level and inside functions): an import may only point to a lower layer, or within a package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prism_hpc"

# bottom to top; packages on one line are peers and must not import each other
LAYERS = [
    {"errors", "seeding"},
    {"config"},
    {"workflow"},
    {"store"},
    {"tracking"},  # may import errors, config, store; never wandb/tensorboard at load
    {"data"},
    {"models", "cost"},
    {"hardware"},
    {"recover", "relabel"},
    {"train", "metrics"},
    {"stages"},
    {"hpc"},
    {"submission"},  # config file -> run dir -> executor (submit, sweep)
    {"sweep", "canary"},  # many runs through the executors; the pre-array check job
    {"cli_bench", "cli_tracking", "cli_doctor", "cli_sweep"},
    {"cli"},
]
RANK = {name: k for k, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, m) for line, m in found if m.startswith("prism_hpc.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        src = parts[0]
        for line, module in _imports(path):
            dst = module.split(".")[1]
            if dst == src:
                continue
            if src not in RANK or dst not in RANK:
                problems.append(f"{path.name}:{line}: {src} or {dst} has no layer")
            elif RANK[dst] >= RANK[src]:
                problems.append(f"{path.relative_to(PACKAGE)}:{line}: {src} imports {module}")
    return problems


def test_every_package_has_a_layer_and_imports_only_point_down():
    assert upward_imports() == []


def test_the_cluster_layer_imports_no_pipeline_code():
    hpc = [m for p in (PACKAGE / "hpc").rglob("*.py") for _, m in _imports(p)]
    allowed = ("prism_hpc.hpc", "prism_hpc.config", "prism_hpc.errors", "prism_hpc.store",
               "prism_hpc.workflow")  # fmt: skip
    assert [m for m in hpc if not m.startswith(allowed)] == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "prism_hpc"
    (fake / "store").mkdir(parents=True)
    (fake / "store" / "x.py").write_text("def f():\n    from prism_hpc.metrics import tables\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert upward_imports() == ["store/x.py:2: store imports prism_hpc.metrics"]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (of the module, classes, functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def stage_names_in(package: Path, names: set[str]) -> list[str]:
    """Every string constant in `package` that equals a stage name (docstrings excluded)."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in names and id(node) not in skip):  # fmt: skip
                problems.append(f"{path.relative_to(package.parent)}:{node.lineno}: {node.value!r}")
    return problems


def test_the_cluster_layer_names_no_stage():
    """`hpc` asks a stage for its policy (afterany, checkpointing, progress, outputs, the
    evaluation array) instead of knowing which stage has it."""
    from prism_hpc.stages import registry

    assert stage_names_in(PACKAGE / "hpc", set(registry().names)) == []


def test_the_stage_name_checker_sees_a_literal_but_not_a_docstring(tmp_path):
    (tmp_path / "hpc").mkdir()
    (tmp_path / "hpc" / "x.py").write_text(
        '"""Runs collect after "collect"."""\n'
        'def f(stage):\n    """The "train" stage."""\n    return stage == "collect"\n'
    )
    assert stage_names_in(tmp_path / "hpc", {"collect", "train"}) == ["hpc/x.py:4: 'collect'"]
