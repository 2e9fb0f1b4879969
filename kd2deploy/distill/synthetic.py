"""A synthetic transfer set labelled by the teacher (Bucilua, Caruana & Niculescu-Mizil 2006, "Model
compression", KDD: the MUNGE procedure), and a temperature-calibrated teacher (Guo et al. 2017; Cho & Hariharan
2019, "On the efficacy of knowledge distillation", ICCV: a less over-confident teacher distils better).

MUNGE makes new inputs near the real ones: each sample moves, attribute by attribute with probability ``p``,
to a normal draw around its nearest neighbour's value with spread ``|x_a - x'_a| / s``. The teacher labels every
synthetic sample (soft targets); they carry no hard label (target -1), so the hard-label controls cannot use them:
the controls train on the real samples for the same number of steps (the few-labels machinery, ``arm_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Munge:
    """MUNGE settings.

    Attributes:
        passes: synthetic samples per real sample (0 = off); the transfer set grows to ``(1 + passes) * n``.
        p: probability that an attribute moves towards the nearest neighbour.
        s: local spread divisor: the draw around the neighbour's value has sd ``|x_a - x'_a| / s``.
    """

    passes: int = 0
    p: float = 0.5
    s: float = 2.0

    @property
    def active(self) -> bool:
        return self.passes > 0


def nearest_neighbours(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Index of each row's nearest other row of ``x`` (flattened, Euclidean)."""
    flat = x.reshape(len(x), -1).double()
    out = []
    for i in range(0, len(flat), chunk):
        d = torch.cdist(flat[i : i + chunk], flat)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out.append(d.argmin(1))
    return torch.cat(out)


def munge(x: torch.Tensor, how: Munge, seed: int) -> torch.Tensor:
    """``how.passes * len(x)`` synthetic samples (same shape per sample as ``x``).

    Per pass, every sample ``e`` with nearest neighbour ``e'`` (in the real set) becomes ``e`` with each
    attribute ``a`` replaced, with probability ``p``, by a draw from ``N(e'_a, |e_a - e'_a| / s)``. (The paper
    also moves ``e'`` towards ``e`` in place; here each real sample yields exactly one child per pass, so passes
    vectorise and every real sample is equally represented.)
    """
    if how.passes <= 0:
        return x[:0].clone()
    gen = torch.Generator().manual_seed(seed)
    nn_idx = nearest_neighbours(x)
    partner = x[nn_idx]
    sd = (x - partner).abs() / how.s
    out = []
    for _ in range(how.passes):
        swap = torch.rand(x.shape, generator=gen) < how.p
        draw = partner + sd * torch.randn(x.shape, generator=gen)
        out.append(torch.where(swap, draw, x))
    return torch.cat(out).to(x.dtype)


def with_munge(x_train: torch.Tensor, y_train: torch.Tensor, teacher_logits: torch.Tensor | None, teacher,
               how: Munge, seed: int):
    """The transfer set grown by MUNGE: ``(x, y, teacher_logits, real)``.

    ``y`` is -1 on the synthetic samples; ``teacher_logits`` covers all samples (the teacher labels the synthetic
    ones); ``real`` holds the indices of the real samples that keep a label (pass it as ``labelled`` to the
    trainers, so arms without a teacher draw their batches from them only).
    """
    from kd2deploy.distill.teacher import teacher_logits_of

    synth = munge(x_train, how, seed)
    x = torch.cat([x_train, synth])
    y = torch.cat([y_train, torch.full((len(synth),), -1, dtype=y_train.dtype)])
    t_real = teacher_logits if teacher_logits is not None else teacher_logits_of(teacher, x_train)
    t = torch.cat([t_real, teacher_logits_of(teacher, synth)]) if len(synth) else t_real
    real = torch.nonzero(y_train >= 0).squeeze(1)
    return x, y, t, real


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature ``T`` that minimises the validation NLL of ``softmax(logits / T)`` (Guo et al. 2017,
    "On calibration of modern neural networks"): a bounded 1-D search over ``log T``.

    Dividing the teacher's logits by it gives a calibrated teacher: its confidence matches its accuracy on
    validation. An over-confident teacher (T > 1) passes on less "dark knowledge" at a given KD temperature.
    """
    import math

    import torch.nn.functional as F
    from scipy.optimize import minimize_scalar

    z, y = logits.detach().double(), y.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    res = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded",
                          options={"xatol": 1e-6})
    return math.exp(res.x)
