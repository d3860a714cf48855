"""The trials as a markdown table and summary, and where the code under test came from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .launch import REPO
from .stages import pipeline_stages
from .trials import Reference, Trial


def _cell(items: list[str], limit: int = 3) -> str:
    if not items:
        return "0"
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f"**{len(items)}**: {shown}"


def table(trials: list[Trial]) -> str:
    head = ("| trial | aimed at | killed in | kill at (s) | run dir at kill | finished at kill "
            "| redone | lost/corrupt | differences after resume | stale tmp left | continued by |")  # fmt: skip
    rows = [head, "|" + "---|" * 11]
    for t in trials:
        kill = f"{t.kill_at:.2f} (+{t.offset:.2f})" if t.kill_at is not None else "not killed"
        how = t.resume + (f" **exit {t.resume_rc}**: {t.resume_error}" if t.resume_rc else "")
        made = "no" if not t.run_dir_existed else "yes" if t.config_at_kill else "no config.yaml"
        rows.append(
            f"| {t.trial} | {t.aimed} | {t.stage} | {kill} | {made} "
            f"| {t.finished} | {_cell(t.redone)} | {_cell(t.lost + t.corrupt)} "
            f"| {_cell(t.differences)} | {_cell(t.stale_tmp)} | {how} |"
        )
    return "\n".join(rows)


def summary(trials: list[Trial], ref: Reference) -> str:
    by_stage: dict[str, int] = {}
    for t in trials:
        by_stage[t.stage] = by_stage.get(t.stage, 0) + 1
    order = (*pipeline_stages(), "(finished)")
    spread = ", ".join(f"{s} {by_stage[s]}" for s in order if s in by_stage)
    windows = ", ".join(f"{s} {b:.1f}-{e:.1f}" for s, (b, e) in ref.windows.items())
    lines = [
        f"- trials: {len(trials)}; killed in: {spread}",
        f"- reference run: {ref.seconds:.1f} s; stage windows (s, by marker times): {windows}",
        f"- kills before the run directory existed: {sum(not t.run_dir_existed for t in trials)}",
        f"- finished items at the kill: {sum(t.finished for t in trials)} in all",
        f"- lost or corrupt finished items: {sum(len(t.lost) + len(t.corrupt) for t in trials)}",
        f"- finished items redone: {sum(len(t.redone) for t in trials)}",
        f"- trials with differences after resume: {sum(bool(t.differences) for t in trials)}",
        f"- failed continuations (nonzero exit): {sum(bool(t.resume_rc) for t in trials)}",
        (
            f"- trials leaving stale `.tmp-` files: {sum(bool(t.stale_tmp) for t in trials)} "
            f"({sum(len(t.stale_tmp) for t in trials)} files; reported, not counted as failures)"
        ),
        (
            f"- result: {'PASS' if all(t.ok for t in trials) else 'FAIL'} "
            f"({sum(t.ok for t in trials)}/{len(trials)} trials clean)"
        ),
    ]
    return "\n".join(lines)


def git_sha() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + (
        " (checkout with uncommitted changes)"
        if git("status", "--porcelain", "--untracked-files=no", "prism_hpc")
        else ""
    )


def export_commit(commit: str, dest: Path) -> str:
    """Unpack `commit`'s tree into dest (read-only for the repo: git archive); return its SHA."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return sha
