"""Trains all the arms of a comparison at once, as one stacked model: the results of ``train_arms``, faster.

A tiny student leaves two CPU cores mostly idle: a step of batch 64 is a few dozen small kernels, each too
small to use the cores well. Stacking the (seed x arm) students along a new leading "model" axis turns many
small steps into one bigger step. Each student keeps its own weights, batch-norm statistics, batches and
loss; the summed loss gives every student exactly its own gradient, and AdamW / SGD / OneCycleLR act
element-wise, so one optimiser over the stacked tensors is the same as one optimiser per student.

Engines, chosen in this order by ``engine="auto"``:

* ``fast``: the student is a chain of standard layers (the zoo's ConvNet / MLP, ``nn.Sequential``,
  the ``Standardized`` wrapper). Images travel as ``(batch, models * channels, H, W)``, so a convolution is
  one grouped convolution and batch norm / pooling / activations are the ordinary kernels over more
  channels; linear layers are batched matrix products.
* ``vmap``: any other student that ``torch.func.vmap`` + ``functional_call`` can run (1.2-1.4x slower
  than ``fast`` on the digits CNN).
* ``sequential``: ``train_arms`` itself, for students neither engine can run or reproduce, or losses that
  do not vectorise. Each engine is checked against the plain modules on a trial batch before it is used.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kd2deploy.distill import dist
from kd2deploy.distill.arms import Arm, arm_pool, initial_weights, train_arms
from kd2deploy.distill.losses import (
    LOSSES,
    hard_ce,
    hinton_loss,
    mse_logits_loss,
    standardize,
    teacher_log_probs,
    teacher_mean_logits,
)
from kd2deploy.distill.resume import Resume, rng_state, set_rng_state
from kd2deploy.distill.train import DivergedError, History, _optimizer, one_cycle
from kd2deploy.distill.transfer import BatchOrder
from kd2deploy.errors import Kd2DeployError

log = logging.getLogger(__name__)

ENGINES = ("auto", "fast", "vmap", "sequential")
Forward = Callable[[dict, dict, torch.Tensor, bool], torch.Tensor]


class CannotBatch(Exception):
    """The arms cannot be trained as one stacked model; the message says why."""


def train_arms_batched(
    build: Callable[[], nn.Module],
    arms: list[Arm],
    tensors: tuple[torch.Tensor, ...],
    teacher_logits: torch.Tensor | None,
    cfg,
    on_epoch: Callable[[Arm, int, dict], None] | None = None,
    *,
    engine: str = "auto",
    max_models: int = 64,
    labelled: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    perturb=None,
    resume: Resume | None = None,
) -> list[tuple[nn.Module, History]]:
    """``train_arms`` with every arm trained at once; returns (model, history) in the order of ``arms``.

    Same initial weights per seed, same batch order per seed, same optimiser, schedule, losses and per-epoch
    validation metrics as ``train_arms`` (to float rounding; dropout masks differ, as they would between two
    sequential runs). History times are the batched run's wall time divided by the number of arms trained
    together, so the arms' times add up to the real total.

    Args:
        build: builds a fresh student (same architecture for every arm).
        arms: the students to train.
        tensors: x_train, y_train, x_val, y_val.
        teacher_logits: the teacher's logits on x_train; needed when an arm has a distillation loss.
        cfg: the TrainConfig shared by all arms.
        on_epoch: called as ``on_epoch(arm, epoch, metrics)`` for every arm after every epoch. If a stacked
            run fails part-way for a reason of its own (e.g. memory), the arms retrain one by one and the
            calls restart at epoch 1.
        engine: "auto" (fastest that works, else ``train_arms``), or force "fast", "vmap" or "sequential";
            a forced engine that cannot run these arms raises CannotBatch.
        max_models: at most this many arms are stacked at once (bounds memory); more train in chunks.
        labelled, teacher, perturb: as for ``train_arms``. Few labels (per-arm batch pools) and ensembles
            (teacher logits with a member axis) train stacked; arms with weighted / hint terms (hooks on each
            student) train one by one while the others stay stacked; per-step perturbations (the teacher runs on
            every batch) make every arm train one by one. A log line says which.
        resume: where per-epoch checkpoints go (one per stack of arms, or per arm trained alone); a run that
            stopped continues from them.

    Raises:
        StageError: when an arm's loss becomes NaN or infinite (the message names the arm and the epoch).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if any(a.needs_teacher for a in arms) and teacher_logits is None and teacher is None:
        raise ValueError("distillation needs teacher_logits")
    extra = {"labelled": labelled, "teacher": teacher, "perturb": perturb, "resume": resume}
    if engine == "sequential" or (engine == "auto" and len(arms) < 2):
        return train_arms(build, arms, tensors, teacher_logits, cfg, on_epoch=on_epoch, **extra)
    unbatchable = _unbatchable(arms, perturb)
    if unbatchable:
        if engine != "auto":
            raise CannotBatch(unbatchable)
        hooked = [a for a in arms if a.terms]
        if (perturb is not None and perturb.active) or len(hooked) >= len(arms) - 1:
            log.info("training %d arms one by one: %s", len(arms), unbatchable)
            return train_arms(build, arms, tensors, teacher_logits, cfg, on_epoch=on_epoch, **extra)
        # the arms with hint / weighted terms one by one, the others stacked; results in the order of ``arms``
        log.info("training %d arms one by one (%s), the other %d stacked", len(hooked), unbatchable,
                 len(arms) - len(hooked))
        rest = [a for a in arms if not a.terms]
        done = dict(zip(hooked, train_arms(build, hooked, tensors, teacher_logits, cfg, on_epoch=on_epoch, **extra),
                        strict=True))
        done.update(zip(rest, train_arms_batched(build, rest, tensors, teacher_logits, cfg, on_epoch, engine=engine,
                                                 max_models=max_models, **extra), strict=True))
        return [done[a] for a in arms]
    if teacher_logits is None and any(a.needs_teacher for a in arms):
        from kd2deploy.distill.teacher import teacher_logits_of

        teacher_logits = teacher_logits_of(teacher, tensors[0])
    out: list[tuple[nn.Module, History]] = []
    for start in range(0, len(arms), max_models):
        chunk = arms[start : start + max_models]
        out += _train_chunk(build, chunk, tensors, teacher_logits, cfg, on_epoch, engine, labelled, resume)
    return out


def _unbatchable(arms: list[Arm], perturb) -> str | None:
    """Why these arms must train one by one, or None."""
    if perturb is not None and perturb.active:
        return "per-step augmentation / mixup runs the teacher on every batch"
    if any(a.terms for a in arms):
        return "weighted / hint terms need hooks on each student"
    return None


# ------------------------------------------------------------------------------------------- planning
def _train_chunk(build, arms, tensors, teacher_logits, cfg, on_epoch, engine, labelled=None, resume=None):
    def sequential(reason: str):
        log.info("training %d arms one by one: %s", len(arms), reason)
        return train_arms(build, arms, tensors, teacher_logits, cfg, on_epoch=on_epoch, labelled=labelled,
                          resume=resume)

    inits: dict[int, dict[str, torch.Tensor]] = {}
    models = []
    for arm in arms:
        if arm.seed not in inits:
            inits[arm.seed] = initial_weights(build, arm.seed)
        model = build()
        model.load_state_dict(inits[arm.seed])
        models.append(model)
    try:
        forward, chosen = _plan(models, arms, tensors[0], teacher_logits, engine)
    except CannotBatch as e:
        if engine != "auto":
            raise
        return sequential(str(e))
    log.info("training %d arms as one stacked model (%s engine)", len(arms), chosen)
    try:
        slot = resume.slot(f"stack_{arms[0].key}_{len(arms)}") if resume is not None else None
        return _train_stacked(forward, models, arms, tensors, teacher_logits, cfg, on_epoch, labelled, slot)
    except Kd2DeployError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: the plain loop may still work
        if engine != "auto":
            raise
        return sequential(f"the stacked run failed ({type(e).__name__}: {e})")


def _plan(models, arms, x_train, teacher_logits, engine) -> tuple[Forward, str]:
    """Picks the first engine that runs and reproduces the plain modules on a trial batch."""
    engines = {"fast": _fast_forward, "vmap": _vmap_forward}
    candidates = ["fast", "vmap"] if engine == "auto" else [engine]
    reasons = []
    for name in candidates:
        try:
            # checked on dropout-free copies (dropout masks are random); trained with the real thing
            plain = [_without_dropout(model) for model in models]
            _check(engines[name](plain[0]), plain, arms, x_train, teacher_logits)
            return engines[name](models[0]), name
        except CannotBatch as e:
            reasons.append(f"{name}: {e}")
        except Exception as e:  # noqa: BLE001 - whatever the engine trips on, the plain loop is the answer
            reasons.append(f"{name}: {type(e).__name__}: {e}")
    raise CannotBatch("; ".join(reasons))


def _without_dropout(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for layer in model.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            layer.p = 0.0
    return model


def _check(forward: Forward, models, arms, x_train, teacher_logits) -> None:
    """Runs the engine and each plain module on the same trial batches (train and eval mode) and compares.

    Each model gets a different batch, so mixing up models or samples shows; the running statistics after a
    training step and the per-arm losses are compared too, and the backward pass must run.
    """
    m = len(models)
    n = min(len(x_train), 8)
    rows = [torch.arange(i, i + n) % len(x_train) for i in range(m)]
    x = torch.stack([x_train[r] for r in rows])
    params, buffers = _stack(models)
    logits = forward(params, buffers, x, True)
    with torch.no_grad():
        ref = torch.stack([model.train()(x[i]) for i, model in enumerate(models)])
    _close(logits, ref, "train-mode logits")
    ref_buffers = _stack(models)[1]
    for k, v in buffers.items():
        _close(v, ref_buffers[k], f"buffer {k} after a training step")
    with torch.no_grad():
        evals = forward(params, buffers, x, False)
        ref = torch.stack([model.eval()(x[i]) for i, model in enumerate(models)])
    _close(evals, ref, "eval-mode logits")
    tl = torch.stack([teacher_logits[r] for r in rows]) if teacher_logits is not None else None
    y = torch.stack([torch.arange(n) % logits.shape[-1]] * m)
    losses = _loss_fn(arms)(logits, tl, y)
    for i, arm in enumerate(arms):
        expected = _arm_loss(arm)(logits[i], None if tl is None else tl[i], y[i])
        _close(losses[i], expected, f"loss of {arm.key}")
    losses.sum().backward()


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.detach().float(), b.detach().float()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True):
        raise CannotBatch(f"{what} differ from the plain modules'")


def _stack(models) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stacks the models' parameters (as fresh leaves that require grad) and buffers along a new axis 0."""
    from torch.func import stack_module_state

    params, buffers = stack_module_state([model.train() for model in models])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    return params, {k: v.clone() for k, v in buffers.items()}


# ---------------------------------------------------------------------------------------------- losses
def _arm_loss(arm: Arm) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``fit`` uses for this arm, as ``fn(student_logits, teacher_logits, y)``."""
    if arm.loss:
        return partial(LOSSES.get(arm.loss), temperature=arm.temperature, alpha=arm.alpha, **dict(arm.options))
    return lambda logits, _tl, y, ls=arm.label_smoothing: hard_ce(logits, y, ls)


def _hinton_stacked(logits, teacher_logits, y, *, temperature: float, alpha: float, label_smoothing: float = 0.0,
                    standardize_logits: bool = False):
    """``losses.hinton_loss`` per model of stacked ``(models, batch, classes)`` logits."""
    t = temperature
    s_z, t_z = logits, teacher_logits
    if standardize_logits:
        s_z, t_z = standardize(logits), standardize(teacher_logits)
    kl = F.kl_div(F.log_softmax(s_z / t, dim=-1), teacher_log_probs(t_z, logits.dim(), t),
                  reduction="none", log_target=True)
    loss = alpha * t * t * kl.sum(-1).mean(-1)
    if alpha < 1:
        loss = loss + (1 - alpha) * _cross_entropy_stacked(logits, y, label_smoothing)
    return loss


def _mse_logits_stacked(logits, teacher_logits, y, *, temperature: float, alpha: float):
    """``losses.mse_logits_loss`` per model of stacked logits."""
    loss = alpha * (logits - teacher_mean_logits(teacher_logits, logits.dim())).square().mean((1, 2))
    if alpha < 1:
        loss = loss + (1 - alpha) * _cross_entropy_stacked(logits, y)
    return loss


def _cross_entropy_stacked(logits, y, label_smoothing: float = 0.0):
    """``losses.hard_ce`` (mean over the labelled samples of the batch) per model of stacked logits."""
    return hard_ce(logits, y, label_smoothing)


_STACKED_LOSSES = {"hinton": _hinton_stacked, "mse-logits": _mse_logits_stacked}


def _stacked_loss(arm: Arm):
    """The arm's loss over stacked logits: a hand-vectorised built-in, or the registered loss under vmap."""
    if not arm.loss:
        return lambda logits, _tl, y: _cross_entropy_stacked(logits, y, arm.label_smoothing)
    fn = LOSSES.get(arm.loss)
    options = dict(arm.options)
    builtin = {"hinton": hinton_loss, "mse-logits": mse_logits_loss}.get(arm.loss)
    if fn is builtin:
        return partial(_STACKED_LOSSES[arm.loss], temperature=arm.temperature, alpha=arm.alpha, **options)
    if getattr(fn, "stacked", False):  # written for (models, batch, classes) logits already
        return partial(fn, temperature=arm.temperature, alpha=arm.alpha, **options)
    from torch.func import vmap

    batched = vmap(partial(fn, temperature=arm.temperature, alpha=arm.alpha, **options))

    def loss(logits, teacher_logits, y):
        with warnings.catch_warnings():  # vmap's "no batching rule, slower fallback" notes
            warnings.simplefilter("ignore", UserWarning)
            return batched(logits, teacher_logits, y)

    return loss


def _loss_fn(arms: list[Arm]):
    """Per-arm losses of stacked logits ``(models, batch, classes)``, one call per distinct loss."""
    groups: dict[tuple, list[int]] = {}
    for i, arm in enumerate(arms):
        key = (arm.loss, arm.temperature, arm.alpha, arm.options) if arm.loss else (None, arm.label_smoothing)
        groups.setdefault(key, []).append(i)
    plan = [(torch.tensor(idx), _stacked_loss(arms[idx[0]])) for idx in groups.values()]
    order = torch.cat([idx for idx, _ in plan]).argsort()

    def losses(logits, teacher_logits, y):
        if len(plan) == 1:
            return plan[0][1](logits, teacher_logits, y)
        parts = [fn(logits[idx], None if teacher_logits is None else teacher_logits[idx], y[idx])
                 for idx, fn in plan]
        return torch.cat(parts)[order]

    return losses


# ------------------------------------------------------------------------------------------- training
def _train_stacked(forward, models, arms, tensors, teacher_logits, cfg, on_epoch, labelled=None, checkpoint=None):
    x_train, y_train, x_val, y_val = tensors[:4]
    m, n = len(arms), len(y_train)
    params, buffers = _stack(models)
    loss_fn = _loss_fn(arms)
    opt = _optimizer(_Holder(params), cfg)
    for group in opt.param_groups:  # multi-tensor kernels; the same element-wise update
        group["foreach"] = True
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = one_cycle(opt, cfg.lr, total) if cfg.schedule == "cosine" else None
    # one batch order per (seed, pool); arms that share both share it (same batches, as in train_arms)
    pools = [arm_pool(a, n, labelled) for a in arms]
    keys = [(a.seed, None if p is None else a.needs_teacher) for a, p in zip(arms, pools, strict=True)]
    orders = {k: BatchOrder(n, cfg.batch_size, k[0], p) for k, p in zip(keys, pools, strict=True)}
    row = torch.tensor([list(orders).index(k) for k in keys])
    hists = [History() for _ in arms]
    start, done_s = 1, 0.0
    ctx = dist.context()
    saved = checkpoint.load() if checkpoint is not None and ctx.is_main else None
    saved = dist.broadcast_object(saved)  # rank 0 reads the resume checkpoint; every rank continues from it
    if saved is not None:
        with torch.no_grad():
            for name, v in saved["params"].items():
                params[name].copy_(v)
            for name, v in saved["buffers"].items():
                buffers[name].copy_(v)
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        for o, st in zip(orders.values(), saved["orders"], strict=True):
            o.set_state(st)
        set_rng_state(saved)
        hists = [History(**h) for h in saved["histories"]]
        start, done_s = saved["epoch"] + 1, saved["wall_s"]
    good = _snapshot(params, buffers)
    t0 = time.perf_counter() - done_s
    for epoch in range(start, cfg.epochs + 1):
        batches = [o.epoch() for o in orders.values()]
        running = torch.zeros(m, dtype=torch.float64)
        for step in range(len(batches[0])):
            idx = torch.stack([b[step] for b in batches])[row]
            total = idx.shape[1]
            if ctx.active:  # this rank's columns of every model's global batch, losses weighted by their share
                a, b = dist.my_slice(total)
                idx = idx[:, a:b]
            opt.zero_grad(set_to_none=True)
            if idx.shape[1]:
                logits = forward(params, buffers, x_train[idx], True)
                losses = loss_fn(logits, None if teacher_logits is None else teacher_logits[idx], y_train[idx])
                if ctx.active:
                    losses = losses * dist.slice_weight(idx.shape[1], total)
                if torch.isfinite(losses.detach()).all():
                    losses.sum().backward()
            else:  # fewer samples than ranks: this rank adds nothing
                losses = torch.zeros(m)
            losses = dist.all_reduce_grads(params.values(), losses.detach())  # whole-batch losses and gradients
            bad = ~torch.isfinite(losses.detach())
            if bad.any():
                k = int(bad.nonzero()[0])
                state = {name: v[k].clone() for name, v in good.items()}
                models[k].load_state_dict(state)
                raise DivergedError(f"student {arms[k].key}", float(losses[k].detach()), epoch, state)
            opt.step()
            if sched is not None:
                sched.step()
            running += losses.detach().double() * total
        dist.average_buffers(v for k, v in buffers.items() if k.endswith(("running_mean", "running_var")))
        good = _snapshot(params, buffers)
        val = _evaluate(forward, params, buffers, x_val, y_val, m)
        elapsed = (time.perf_counter() - t0) / m
        all_metrics = []
        for k, hist in enumerate(hists):
            hist.samples_seen += n
            all_metrics.append({"epoch": epoch, "train_loss": float(running[k]) / n, "val_loss": val[k][0],
                                "val_acc": val[k][1], "time_s": elapsed})
            hist.epochs.append(all_metrics[-1])
        if checkpoint is not None and ctx.is_main:
            checkpoint.save(epoch, {
                "params": {k: v for k, v in good.items() if k in params},
                "buffers": {k: v for k, v in good.items() if k in buffers},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                "orders": [o.state() for o in orders.values()], "histories": [h.as_dict() for h in hists],
                "wall_s": time.perf_counter() - t0, **rng_state(),
            })
        if on_epoch is not None:
            for arm, metrics in zip(arms, all_metrics, strict=True):
                on_epoch(arm, epoch, metrics)
    elapsed = (time.perf_counter() - t0) / m
    out = []
    for k, (model, hist) in enumerate(zip(models, hists, strict=True)):
        state = {name: p[k].detach().clone() for name, p in params.items()}
        state.update({name: b[k].clone() for name, b in buffers.items()})
        model.load_state_dict(state)
        model.eval()
        hist.train_time_s = elapsed
        out.append((model, hist))
    return out


def _snapshot(params, buffers) -> dict[str, torch.Tensor]:
    """A copy of the stacked weights (the last good epoch, for a run that diverges)."""
    return {**{k: p.detach().clone() for k, p in params.items()}, **{k: b.clone() for k, b in buffers.items()}}


class _Holder:
    """Lets ``train._optimizer`` build the optimiser ``fit`` would, over the stacked parameters."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self._params = list(params.values())

    def parameters(self):
        return iter(self._params)


@torch.no_grad()
def _evaluate(forward, params, buffers, x, y, m: int, batch_size: int = 1024) -> list[tuple[float, float]]:
    """(val loss, val accuracy) per stacked model, in eval mode, like ``train.evaluate``."""
    logits = torch.cat(
        [forward(params, buffers, x[i : i + batch_size].expand(m, *x[i : i + batch_size].shape), False)
         for i in range(0, len(x), batch_size)],
        dim=1,
    )
    b, k = logits.shape[1:]
    loss = F.cross_entropy(logits.reshape(m * b, k), y.repeat(m), reduction="none").view(m, b).mean(1)
    acc = (logits.argmax(-1) == y).float().mean(1)
    return [(float(loss[i]), float(acc[i])) for i in range(m)]


# -------------------------------------------------------------------------------------- vmap engine
def _vmap_forward(template: nn.Module) -> Forward:
    """Any module: ``functional_call`` on a weightless copy, vectorised over the stacked weights."""
    from torch.func import functional_call, vmap

    base = copy.deepcopy(template).to("meta")

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    batched = vmap(one, in_dims=(0, 0, 0), randomness="different")

    def forward(params, buffers, x, training):
        base.train(training)
        return batched(params, buffers, x)

    return forward


# -------------------------------------------------------------------------------------- fast engine
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
              nn.Identity, nn.Dropout)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, *_POINTWISE, *_POOLS)


def _chain(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The leaf layers a module applies one after another, with their state_dict prefixes.

    Only containers whose forward is known to be "children in order" qualify (checked by exact type, so a
    subclass with its own forward does not); anything else raises CannotBatch.
    """
    from kd2deploy.models.nets import MLP, ConvNet, Standardized

    kind = type(module)
    if kind is nn.Sequential:
        children = list(module.named_children())
    elif kind is ConvNet:
        children = [("features", module.features), ("head", module.head)]
    elif kind is MLP:
        children = [("net", module.net)]
    elif kind is Standardized:
        yield prefix, module
        children = [("model", module.model)]
    elif kind in _LEAVES:
        yield prefix, module
        return
    else:
        where = prefix.rstrip(".") or "model"
        raise CannotBatch(f"layer {where} ({kind.__name__}) is not a plain layer chain")
    for name, child in children:
        yield from _chain(child, f"{prefix}{name}.")


def _fast_forward(template: nn.Module) -> Forward:
    """The student as a chain of stacked-layer ops on images ``(B, M*C, H, W)`` or rows ``(M, B, F)``."""
    from kd2deploy.models.nets import Standardized

    layers = list(_chain(copy.deepcopy(template)))  # a private copy: its layers' train/eval flags change
    for prefix, layer in layers:
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise CannotBatch(f"{prefix}: padding_mode {layer.padding_mode!r}")
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
            raise CannotBatch(f"{prefix}: Flatten over dims {layer.start_dim}..{layer.end_dim}")
    used = {prefix + k for prefix, layer in layers if not isinstance(layer, Standardized)
            for k, _ in layer.named_parameters(recurse=False)}
    unused = {k for k, _ in template.named_parameters()} - used
    if unused:
        raise CannotBatch(f"parameters outside the layer chain: {', '.join(sorted(unused))}")

    def forward(params, buffers, x, training):
        m, b = x.shape[:2]
        kind = "raw"  # (M, B, *sample shape) until the first layer needs another layout
        for prefix, layer in layers:
            layer.train(training)
            if isinstance(layer, Standardized):
                shape = (m,) + (1,) * (x.dim() - 1)
                x = (x - buffers[prefix + "mean"].view(shape)) / buffers[prefix + "std"].view(shape)
                continue
            if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d, *_POOLS)) and kind != "img":
                if kind != "raw" or x.dim() != 5:
                    raise CannotBatch(f"{prefix}: expects images")
                x, kind = x.transpose(0, 1).reshape(b, -1, *x.shape[3:]), "img"
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d)) and kind != "rows":
                if kind != "raw" or x.dim() != 3:
                    raise CannotBatch(f"{prefix}: expects rows of features")
                kind = "rows"
            if isinstance(layer, nn.Conv2d):
                w = params[prefix + "weight"]
                bias = params.get(prefix + "bias")
                x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                             layer.stride, layer.padding, layer.dilation, layer.groups * m)
            elif isinstance(layer, nn.Linear):
                w = params[prefix + "weight"].transpose(1, 2)
                bias = params.get(prefix + "bias")
                x = torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)
            elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                x = _batch_norm(layer, prefix, x, params, buffers, training, rows=kind == "rows")
            elif isinstance(layer, nn.Flatten):
                if kind == "img":
                    x = x.contiguous().view(b, m, -1).transpose(0, 1)
                else:
                    x = x.reshape(m, b, -1)
                kind = "rows"
            else:  # pointwise or per-channel pooling: the layer itself, over more channels
                x = layer(x)
        if kind != "rows" and not (kind == "raw" and x.dim() == 3):
            raise CannotBatch("the model does not end in (batch, classes) logits")
        return x

    return forward


def _batch_norm(layer, prefix, x, params, buffers, training, rows=False):
    """``nn.BatchNorm*d.forward`` over stacked channels (running statistics update in place, per model)."""
    if rows:  # (M, B, F) as (B, M*F): one channel per (model, feature)
        m, b = x.shape[:2]
        x = _batch_norm(layer, prefix, x.transpose(0, 1).reshape(b, -1), params, buffers, training)
        return x.view(b, m, -1).transpose(0, 1)
    factor = 0.0 if layer.momentum is None else layer.momentum
    if training and layer.track_running_stats:
        count = buffers.get(prefix + "num_batches_tracked")
        if count is not None:
            count.add_(1)
            if layer.momentum is None:
                factor = 1.0 / float(count.reshape(-1)[0])
    bn_training = training or not layer.track_running_stats
    mean = buffers.get(prefix + "running_mean")
    var = buffers.get(prefix + "running_var")
    use_stats = not training or layer.track_running_stats
    weight, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
    return F.batch_norm(
        x,
        mean.view(-1) if mean is not None and use_stats else None,
        var.view(-1) if var is not None and use_stats else None,
        None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1),
        bn_training, factor, layer.eps,
    )
