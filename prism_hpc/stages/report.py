"""Report: the pipeline's last stage. Diversity of the distilled set (and of its real reference)
into `diversity.json`, then `report.md` + `figures/` in the run directory."""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import write_marker
from prism_hpc.workflow import Item, TaskEnv


class ReportStage(SealedStage):
    name = "report"
    depends_on = ("train",)

    def items(self, cfg: Config) -> list[Item]:
        return [Item(self.name, 0, "report", {})]

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("report", layout.report_md(run_dir)), ("figures", layout.figures_dir(run_dir))]

    def estimate(self, cfg: Config) -> dict:
        from prism_hpc.stages.costing import report_cost, safely
        from prism_hpc.stages.recover import distilled_size

        return {
            "note": "diversity features of the distilled set and its real reference, report",
            **safely(report_cost, cfg, distilled_size(cfg)),
        }

    def _track(self, cfg: Config, item: Item, env: TaskEnv, report: Path) -> None:
        """The final tables as text and the figures as images, to the enabled trackers."""
        from prism_hpc.stages.tracked import tracker_for

        with tracker_for(cfg, self.name, item, env) as tracker:
            tracker.text("report", report.read_text(encoding="utf-8"))
            for png in sorted(layout.figures_dir(env.run_dir).glob("*.png")):
                tracker.image(f"figures/{png.stem}", png)

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        if not env.is_main:
            return
        from prism_hpc.metrics.measure import compute_diversity, write_diversity
        from prism_hpc.metrics.report import write_report

        run_dir = Path(env.run_dir)
        result, arrays = compute_diversity(cfg, run_dir, env.device, env.log)
        diversity = write_diversity(run_dir, result, arrays)
        report = write_report(
            [run_dir], run_dir, compute_diversity=False, device=env.device, log=env.log
        )
        env.log(f"report: wrote {report}")
        self._track(cfg, item, env, report)
        ref = result.get("reference") or {}
        write_marker(
            self.marker_path(run_dir, item),
            {
                "report": report.name,
                "extractor": result["extractor"],
                "diversity_mean": result["distilled"]["mean"],
                "reference_mean": ref.get("mean"),
            },
            # not report.md: `prism-hpc report` rewrites it by hand; the stage is redone
            # whenever a student is (its inputs), so the report never shows an old number
            run_dir, outputs=[diversity], inputs=env.inputs,
        )  # fmt: skip
