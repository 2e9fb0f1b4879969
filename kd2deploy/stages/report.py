"""The headline, then the reports (Markdown, HTML) over results.json."""

from __future__ import annotations

from datetime import datetime, timezone

from kd2deploy.engine.stage import BaseStage


class ReportStage(BaseStage):
    name = "report"
    requires = ("ship",)
    timed = False  # a report cannot quote its own rendering time (a re-render must give the same file)

    def run(self, state, progress) -> None:
        from kd2deploy.report import write_reports
        state.results["task_sections"] = state.task.report_sections(state.results)
        run = state.results["run"]
        run["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        started = datetime.fromisoformat(run["started"])
        run["wall_s"] = (datetime.now(timezone.utc) - started).total_seconds()
        write_reports(state.results, state.dir, state.cfg.report.formats)
