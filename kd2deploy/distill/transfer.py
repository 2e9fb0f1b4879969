"""The transfer set: which samples each step sees (batch order, labelled subsets) and how they are perturbed.

Every arm of a comparison draws its batches from a :class:`BatchOrder` seeded by the arm's seed, and its
augmentation / mixup from a generator seeded the same way, so per seed every arm sees the same views; only the
loss (and, with few labels, which pool the batches come from) differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


class BatchOrder:
    """Index batches, epoch after epoch.

    Args:
        n: training set size; an epoch is ``ceil(n / batch_size)`` steps.
        batch_size: samples per step.
        seed: seeds the order.
        pool: the indices to draw from. None: every sample once per epoch in a fresh permutation (the last
            batch is short). A tensor: full batches drawn from a stream of permutations of ``pool`` — the same
            number of steps and samples as a full epoch, however small the pool (the fair budget for controls
            that may only see labelled samples).
    """

    def __init__(self, n: int, batch_size: int, seed: int, pool: torch.Tensor | None = None):
        self.n, self.batch_size, self.pool = n, batch_size, pool
        self.steps = math.ceil(n / batch_size)
        self.gen = torch.Generator().manual_seed(seed)
        self._buf = torch.empty(0, dtype=torch.long)

    def epoch(self) -> list[torch.Tensor]:
        if self.pool is None:
            perm = torch.randperm(self.n, generator=self.gen)
            return [perm[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        need = self.steps * self.batch_size
        while len(self._buf) < need:
            perm = torch.randperm(len(self.pool), generator=self.gen)
            self._buf = torch.cat([self._buf, self.pool[perm]])
        out, self._buf = self._buf[:need], self._buf[need:]
        return list(out.view(self.steps, self.batch_size))

    def state(self) -> dict[str, torch.Tensor]:
        """Where the order stands (for a resumable checkpoint)."""
        return {"gen": self.gen.get_state(), "buf": self._buf.clone()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["gen"])
        self._buf = state["buf"].clone()


def labelled_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, stratified ``fraction`` of ``y`` that keeps its labels.

    Each class keeps ``round(fraction * count)`` samples, at least one when ``fraction > 0``; 0 keeps none.
    """
    if fraction >= 1:
        return np.arange(len(y))
    if fraction <= 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


@dataclass(frozen=True)
class Perturb:
    """Per-step input perturbations, applied to every arm alike (teacher and student see the same view).

    Attributes:
        shift_px: random integer shift of each image by up to this many pixels on both axes (zero fill); 0 = off.
        mixup_alpha: mixup with lambda ~ Beta(a, a), one lambda per batch; 0 = off.
    """

    shift_px: int = 0
    mixup_alpha: float = 0.0

    @property
    def active(self) -> bool:
        return self.shift_px > 0 or self.mixup_alpha > 0


def random_shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Shifts each image of ``(B, C, H, W)`` by its own (dy, dx) in [-max_px, max_px], filling with zeros."""
    if x.dim() != 4:
        raise ValueError(f"shift augmentation needs images (batch, channels, height, width), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    p = max_px
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    off = torch.randint(0, 2 * p + 1, (b, 2), generator=gen)
    rows = (off[:, 0, None] + torch.arange(h)).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * p)
    out = padded.gather(2, rows)
    cols = (off[:, 1, None] + torch.arange(w)).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return out.gather(3, cols)


def perturb(xb: torch.Tensor, yb: torch.Tensor, how: Perturb, gen: torch.Generator):
    """Applies ``how`` to a batch; returns ``(x, mix)`` with ``mix = (lam, y_partner)`` under mixup else None."""
    if how.shift_px > 0:
        xb = random_shift(xb, how.shift_px, gen)
    mix = None
    if how.mixup_alpha > 0:
        lam = _beta(how.mixup_alpha, gen)
        partner = torch.randperm(len(xb), generator=gen)
        xb = lam * xb + (1 - lam) * xb[partner]
        mix = (lam, yb[partner])
    return xb, mix


def _beta(a: float, gen: torch.Generator) -> float:
    """A Beta(a, a) draw that follows ``gen`` (torch.distributions cannot take a generator)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(a, a))
