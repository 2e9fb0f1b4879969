"""Chained stage keys and the plan of a run: which stages run, which are reused from the cache, and why.

A stage's key is the sha256 of its own inputs (:meth:`Stage.key_inputs`) together with the keys of the stages it
requires (Olive's ``get_output_model_id``): any stage can be cached without a key function of its own, and a
change anywhere upstream changes every key below it. ``kd2deploy plan`` prints the plan (DVC's ``status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kd2deploy.engine.stage import Stage
    from kd2deploy.engine.state import RunState


@dataclass(frozen=True)
class PlannedStage:
    """One line of the plan."""

    name: str
    action: str  # "run" or "reuse"
    why: str
    key: str | None
    cached: bool
    ranks: str


def chain(stages: list[Stage], state: RunState) -> None:
    """Fills ``state.keys`` / ``state.key_inputs``: each keyed stage's own inputs plus its upstream keys."""
    from kd2deploy.cache import stage_key

    for stage in stages:
        own = stage.key_inputs(state)
        upstream = {r: state.keys[r] for r in stage.requires if r in state.keys}
        if own is None and not upstream:
            continue
        inputs = {"stage": stage.name, "task": state.cfg.task, "own": own, "upstream": upstream}
        state.key_inputs[stage.name] = inputs
        state.keys[stage.name] = stage_key(inputs)


def plan(stages: list[Stage], state: RunState) -> list[PlannedStage]:
    """What a run with this state would do, stage by stage (nothing is computed or written)."""
    chain(stages, state)
    rows: list[PlannedStage] = []
    for stage in stages:
        key = state.keys.get(stage.name)
        if not stage.cached:
            rows.append(PlannedStage(stage.name, "run", "not cached", key, False, stage.ranks))
            continue
        if state.cache is None:
            rows.append(PlannedStage(stage.name, "run", "cache off (--no-cache)", key, True, stage.ranks))
            continue
        if stage.name in state.cache.force:
            rows.append(PlannedStage(stage.name, "run", "forced", key, True, stage.ranks))
            continue
        folder = state.cache.root / stage.name / key
        if (folder / "entry.json").is_file():
            rows.append(PlannedStage(stage.name, "reuse", f"cache entry {key[:12]} ({_created(folder)})", key,
                                     True, stage.ranks))
        else:
            changed = _changed_upstream(rows, stage)
            resume = (state.cache.root / stage.name / f"{key}.progress").is_dir()
            why = (f"upstream {changed} runs" if changed else "no cache entry for this key")
            rows.append(PlannedStage(stage.name, "run", why + ("; resumes from its last epoch" if resume else ""),
                                     key, True, stage.ranks))
    return rows


def _changed_upstream(rows: list[PlannedStage], stage: Stage) -> str | None:
    for r in rows:
        if r.name in stage.requires and r.cached and r.action == "run":
            return r.name
    return None


def _created(folder: Path) -> str:
    import json

    try:
        return "created " + json.loads((folder / "entry.json").read_text(encoding="utf-8"))["created"]
    except (OSError, ValueError, KeyError):
        return "unreadable: will be rebuilt"


def plan_pipeline(cfg: Any, out: Path = Path("runs"), force: Any = (), cache: bool = True) -> list[PlannedStage]:
    """The plan of ``kd2deploy run`` for ``cfg`` (the Python API behind ``kd2deploy plan``)."""
    from kd2deploy.cache import StageCache, resolve_force
    from kd2deploy.engine.state import RunState
    from kd2deploy.stages import stages_for
    from kd2deploy.tasks.base import task_of

    task = task_of(cfg)(cfg)
    state = RunState(cfg=cfg, task=task, dir=Path(out), out=Path(out),
                     cache=StageCache(Path(out) / ".cache", resolve_force(force)) if cache else None)
    return plan(stages_for(cfg), state)
