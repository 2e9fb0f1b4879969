"""Per-epoch training checkpoints, so that a stopped run (Ctrl-C, SIGTERM, kill -9, a closed laptop) continues
from its last complete epoch instead of starting over.

A stage that trains gets a :class:`Resume` folder beside its cache entry, ``<out>/.cache/<stage>/<key>.progress/``:
the same content-addressed key, so running the same command again finds it, and a changed config (another key)
never resumes from the wrong training. Each trained thing (the teacher, an ensemble member, a stack of students,
one student) has a :class:`Slot` there, one file rewritten atomically at the end of every epoch with everything
the loop needs to go on exactly as if it had never stopped: weights, optimiser, schedule, the batch-order and
augmentation generators, the global torch RNG (dropout), the history so far. On CPU with the same threads the
resumed run is bit-identical to an uninterrupted one (tested). The folder is removed once the stage's cache entry
is stored. A file lock keeps two runs of the same key from writing into one folder: the second trains without
checkpoints and says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from kd2deploy import ui
from kd2deploy.rundir import save_torch_atomic

log = logging.getLogger("kd2deploy")

FORMAT = 1


class Slot:
    """One trained thing's checkpoint file."""

    def __init__(self, owner: Resume, tag: str):
        self.owner, self.tag = owner, tag
        self.path = owner.dir / (tag.replace("/", "_").replace(" ", "_") + ".pt")

    def load(self) -> dict[str, Any] | None:
        """The last complete epoch's state, or None (nothing saved yet, or unreadable: then train from the start)."""
        import torch

        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("format") != FORMAT or state.get("tag") != self.tag:
                raise ValueError("written by another version or for another model")
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint costs only the epochs it held
            msg = f"{self.path}: not usable ({type(e).__name__}: {e}); {self.tag} trains from the start"
            log.warning(msg)
            ui.warn(msg)
            return None
        self.owner.resumed[self.tag] = int(state["epoch"])
        log.info("%s resumes after epoch %d from %s", self.tag, state["epoch"], self.path)
        return state

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        save_torch_atomic({"format": FORMAT, "tag": self.tag, "epoch": epoch, **state}, self.path)


class Resume:
    """The per-epoch checkpoints of one stage (see the module's doc)."""

    def __init__(self, folder: Path, fresh: bool = False):
        """``fresh``: forget earlier checkpoints (``--force``) and start over."""
        self.dir = Path(folder)
        self.resumed: dict[str, int] = {}  # tag -> the epoch it continued after
        self._lock = None
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def acquire(self) -> bool:
        """Takes the folder's lock; False when another live run holds it (this one then keeps no checkpoints)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / "lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            other = f.read().strip() or "?"
            f.close()
            msg = (f"another run (pid {other}) is training the same stage with the same inputs into {self.dir}; "
                   "this run trains without resume checkpoints")
            log.warning(msg)
            ui.warn(msg)
            return False
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f
        return True

    def slot(self, tag: str) -> Slot | None:
        return Slot(self, tag) if self._lock is not None else None

    def finish(self) -> None:
        """The stage is done and stored: its checkpoints are no longer needed."""
        if self._lock is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def rng_state() -> dict[str, Any]:
    """The global RNGs a training loop may draw from (torch's CPU generator: dropout, random init)."""
    import torch

    return {"torch_rng": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch_rng"])
