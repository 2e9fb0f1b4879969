"""Training over several processes (torchrun): who this process is, and the few collectives training needs.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment; without them
the context is a single process and every helper here is a no-op, so the training loops need no second code path.

How a step is split (data parallel, the same result as one process):

* every rank draws the SAME global batch order (same seed, ``transfer.BatchOrder``) and trains on its own
  contiguous slice of each global batch (:func:`my_slice`);
* each rank's loss (a mean over its slice) is weighted by ``slice size / global batch size``, so the SUM of the
  ranks' gradients, all-reduced after ``backward`` (:func:`all_reduce_grads`), is the gradient one process gets
  on the whole batch — exactly, uneven last batches included (up to float summation order);
* the optimiser then takes the same step on every rank, so the weights stay identical without broadcasts.

The gradient all-reduce is done by hand, not by ``DistributedDataParallel``: the stacked many-student trainer
(``batched.py``, ``torch.func`` over stacked parameters) has no ``nn.Module`` DDP could wrap, and one mechanism
for both loops is simpler to reason about. Batch-norm layers normalise with their rank's slice statistics (as
DDP without SyncBatchNorm does: ``SyncBatchNorm`` raises on CPU in torch 2.13); their running mean / variance
are averaged across ranks at the end of every epoch (:func:`average_buffers`).

Only rank 0 writes files; the others wait at a barrier after training and exit with 0
(:func:`exit_training_rank`). When a peer process dies, a collective fails with a gloo error: :class:`RankLost`
turns it into one clear message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from kd2deploy.errors import StageError

log = logging.getLogger("kd2deploy")

DIE_AFTER_ENV = "KD2DEPLOY_TEST_DIE_AFTER_STEPS"  # "RANK:STEPS": that rank kills itself (tests of rank loss)


class RankLost(StageError):
    """Another training process stopped (killed, crashed): the collective this rank waited in failed."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    nnodes: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict[str, Any]:
        return {"processes": self.world_size, "backend": self.backend, "world_size": self.world_size,
                "nnodes": self.nnodes}


_ctx = DistContext()
_steps = 0


def from_env() -> DistContext:
    """The context torchrun's environment describes (no process group is created)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    # kd2deploy trains on the CPU (no tensor moves to a GPU), and NCCL reduces only CUDA tensors: gloo even where
    # CUDA is available (choosing NCCL there made every `--nproc` run fail on a GPU machine).
    backend = "gloo"
    return DistContext(rank=int(os.environ.get("RANK", "0")), world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=backend,
                       nnodes=max(1, world // max(1, local_world)))


def init() -> DistContext:
    """Joins the process group torchrun set up (gloo: training runs on the CPU); a no-op for one process.

    With several processes each uses one torch thread (two threads per process on a shared 2-core machine ran
    several times slower); set ``KD2DEPLOY_THREADS_PER_RANK`` to change that.
    """
    global _ctx
    ctx = from_env()
    if not ctx.active:
        _ctx = ctx
        return ctx
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(int(os.environ.get("KD2DEPLOY_THREADS_PER_RANK", "1")))
    if not dist.is_initialized():
        dist.init_process_group(ctx.backend, timeout=datetime.timedelta(minutes=30))
    _ctx = ctx
    log.info("distributed: rank %d of %d, backend %s", ctx.rank, ctx.world_size, ctx.backend)
    return ctx


def cleanup() -> None:
    """Leaves the process group (after this, no collective may run)."""
    global _ctx
    if _ctx.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        import gc

        gc.collect()  # free the group's last works while the interpreter is fully alive (see exit_training_rank)
    _ctx = DistContext()


def exit_training_rank() -> NoReturn:
    """Ends a training process other than rank 0 once training is over, with exit code 0, skipping Python's
    interpreter shutdown.

    Rank 0 writes every file, so this process has nothing left to save. Letting the interpreter shut down right
    after the last collective races gloo's worker threads, which may still be releasing that collective's
    tensors: a C++ thread that needs the GIL during shutdown is ended with ``pthread_exit`` and the C++ runtime
    aborts the process ("terminate called without an active exception", SIGABRT; seen once in CI right after the
    post-training barrier; pytorch/pytorch#179291). torchrun then reports the rank as failed and stops rank 0
    in the middle of its export. Flushing and ``os._exit(0)`` leaves no shutdown to race.
    """
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(0)


def context() -> DistContext:
    return _ctx


def is_main() -> bool:
    return _ctx.is_main


def _lost(e: BaseException) -> RankLost:
    return RankLost(f"rank {_ctx.rank}: another training process stopped ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160] if str(e) else ''})")


def barrier() -> None:
    if _ctx.active:
        import torch.distributed as dist

        try:
            dist.barrier()
        except RuntimeError as e:
            raise _lost(e) from e


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors inside travel on the CPU)."""
    if not _ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj if _ctx.is_main else None]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as e:
        raise _lost(e) from e
    return box[0]


def broadcast_state(module) -> None:
    """Copies rank 0's parameters and buffers into ``module`` on every rank."""
    if not _ctx.active:
        return
    import torch

    state = broadcast_object({k: v.detach().cpu() for k, v in module.state_dict().items()}
                             if _ctx.is_main else None)
    with torch.no_grad():
        module.load_state_dict(state)


def my_slice(n: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` of a global batch of ``n`` samples (the first ``n % world``
    ranks get one more; a rank may get none when ``n < world``)."""
    w, r = _ctx.world_size, _ctx.rank
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def slice_weight(local: int, total: int) -> float:
    """The factor on a rank's mean loss so the summed gradients equal the whole batch's: ``local / total``."""
    return local / total if total else 0.0


def all_reduce_grads(params: Iterable, extra: Any = None):
    """Sums the gradients of ``params`` over ranks in place (one flat all-reduce); parameters without a gradient
    count as zero. ``extra`` (a tensor, e.g. the weighted loss) is summed in the same call and returned."""
    if not _ctx.active:
        return extra
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    if extra is not None:
        parts.append(extra.detach().reshape(-1).to(parts[0].dtype if parts else torch.float32))
    flat = torch.cat(parts)
    _maybe_die()
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    except RuntimeError as e:
        raise _lost(e) from e
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n
    if extra is not None:
        return flat[offset:].view_as(extra).to(extra.dtype)
    return None


def average_buffers(buffers: Iterable) -> None:
    """Averages floating-point buffers (batch-norm running mean / var) across ranks in place."""
    if not _ctx.active:
        return
    import torch
    import torch.distributed as dist

    bufs = [b for b in buffers if torch.is_floating_point(b)]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    except RuntimeError as e:
        raise _lost(e) from e
    flat /= _ctx.world_size
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def bn_buffers(module) -> list:
    """The running statistics of ``module``'s batch-norm layers (what :func:`average_buffers` averages)."""
    from torch import nn

    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            out += [m.running_mean, m.running_var]
    return out


def _maybe_die() -> None:
    """Test hook: ``KD2DEPLOY_TEST_DIE_AFTER_STEPS=RANK:STEPS`` makes that rank SIGKILL itself at that step."""
    global _steps
    spec = os.environ.get(DIE_AFTER_ENV)
    if not spec:
        return
    _steps += 1
    rank, steps = (int(v) for v in spec.split(":"))
    if rank == _ctx.rank and _steps >= steps:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for one process)."""
    if not _ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _ctx.world_size
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as e:
        raise _lost(e) from e
    return out
