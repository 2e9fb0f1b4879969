"""The shape every stage has (DVC's ``changed`` / ``reproduce``, Olive's passes): one object per stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from kd2deploy.cache import Entry
    from kd2deploy.engine.state import RunState


class Stage(Protocol):
    """One step of a pipeline.

    Attributes:
        name: the stage's name (``--force NAME``, the plan, results.json's stage timings).
        requires: stages whose output this one reads; their keys chain into this one's key.
        cached: True when the engine may reuse the stage's output from the content-addressed cache
            (``restore`` then rebuilds it from the entry instead of ``run``).
        ranks: ``"all"`` when every process of a distributed run takes part (training), ``"main"`` when rank 0
            alone runs it (export, benchmarks, reports).
    """

    name: str
    requires: tuple[str, ...]
    cached: bool
    ranks: Literal["all", "main"]

    def key_inputs(self, state: RunState) -> dict[str, Any] | None:
        """What this stage's output depends on besides its upstream stages (config sections, file hashes);
        None when the stage has no key of its own (it is then keyed by its upstream stages alone)."""

    def run(self, state: RunState, progress: Any) -> list[str] | None:
        """Computes the stage: writes its part of ``state.results`` and its files into the run folder. A cached
        stage returns the names of its files under ``checkpoints/`` that make up its cache entry."""

    def restore(self, state: RunState, entry: Entry, record: dict[str, Any]) -> list[str]:
        """A cached stage only: rebuilds its output from a cache entry; returns the entry's files to copy into
        the run folder's checkpoints/."""


class BaseStage:
    """Defaults for the Stage protocol: uncached, rank 0 only, no key inputs of its own."""

    name = ""
    requires: tuple[str, ...] = ()
    cached = False
    ranks: Literal["all", "main"] = "main"
    timed = True  # its wall time goes into results.json's run.stage_wall_s

    def key_inputs(self, state: RunState) -> dict[str, Any] | None:
        return None

    def run(self, state: RunState, progress: Any) -> list[str] | None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def restore(self, state: RunState, entry: Entry, record: dict[str, Any]) -> list[str]:
        raise NotImplementedError(f"stage {self.name} is not cached")
