"""The shape limits the architecture promises (docs/architecture.md): small modules with one
job each and functions whose inputs fit on one line of thought. Typer command modules are
exempt from the parameter limit (each option is a parameter there)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_PARAMETERS = 7
COMMAND_MODULES = {"prism_hpc/cli.py", "prism_hpc/cli_bench.py", "prism_hpc/cli_doctor.py"}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Named parameters except self/cls; *args and **kwargs count one each."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return (
        len([n for n in names if n not in ("self", "cls")])
        + (args.vararg is not None)
        + (args.kwarg is not None)
    )


def long_signatures(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({parameter_count(node)})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and parameter_count(node) > MAX_PARAMETERS
    ]


def test_parameter_count_is_measured_as_documented():
    tree = ast.parse("def f(self, a, b=1, *c, d, **e): pass\ndef g(cls, /, x): pass")
    f, g = tree.body
    assert parameter_count(f) == 5 and parameter_count(g) == 1


def test_no_module_is_over_the_line_limit():
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in python_files("prism_hpc", "benchmarks")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_takes_more_than_seven_parameters():
    found = [
        line
        for p in python_files("prism_hpc")
        if str(p.relative_to(ROOT)) not in COMMAND_MODULES
        for line in long_signatures(p)
    ]
    assert not found, f"functions over {MAX_PARAMETERS} parameters: {found}"
