"""The arithmetic that makes N processes train like one: batch slices, loss weights, summed gradients, and the
collectives themselves on a real 2-process gloo group (no mocks)."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd2deploy.distill import dist


def _as_rank(rank: int, world: int):
    dist._ctx = dist.DistContext(rank=rank, world_size=world, backend="gloo")


@pytest.fixture(autouse=True)
def _restore():
    yield
    dist._ctx = dist.DistContext()


@pytest.mark.parametrize("n,world", [(64, 2), (7, 3), (5, 2), (2, 3), (1, 4), (50, 4)])
def test_slices_partition_the_batch_and_weights_sum_to_one(n, world):
    bounds, weights = [], []
    for r in range(world):
        _as_rank(r, world)
        a, b = dist.my_slice(n)
        bounds.append((a, b))
        weights.append(dist.slice_weight(b - a, n))
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(world - 1))  # contiguous, no gap, no overlap
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("n,world", [(64, 2), (7, 3), (2, 3)])
def test_summed_weighted_slice_gradients_equal_the_whole_batch_gradient(n, world):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    summed = [torch.zeros_like(p) for p in model.parameters()]
    for r in range(world):
        _as_rank(r, world)
        a, b = dist.my_slice(n)
        if b == a:
            continue  # a rank with no samples adds zero
        model.zero_grad()
        (F.cross_entropy(model(x[a:b]), y[a:b]) * dist.slice_weight(b - a, n)).backward()
        for s, p in zip(summed, model.parameters(), strict=True):
            s += p.grad
    for s, w in zip(summed, whole, strict=True):
        assert torch.allclose(s, w, atol=1e-6)


def test_one_process_helpers_are_no_ops():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    loss = torch.tensor(0.5)
    assert dist.all_reduce_grads([p], loss) is loss
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_object(3) == [3]
    assert dist.my_slice(10) == (0, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    ctx = dist.init()
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.fill_(rank + 1.0)
        bn.running_var.fill_(2.0 * (rank + 1))
    dist.average_buffers(dist.bn_buffers(bn))
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.full((2,), float(rank + 1))
    loss = dist.all_reduce_grads([p], torch.tensor(float(rank)))
    obj = dist.broadcast_object({"from": rank})
    gathered = dist.all_gather_object(rank * 10)
    dist.barrier()
    dist.cleanup()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"ctx": ctx.as_dict(), "mean": bn.running_mean.tolist(), "var": bn.running_var.tolist(),
                   "grad": p.grad.tolist(), "loss": float(loss), "obj": obj, "gathered": gathered,
                   "batches": int(bn.num_batches_tracked)}, f)


def test_collectives_on_a_real_two_process_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ctx"] == {"processes": 2, "backend": "gloo", "world_size": 2, "nnodes": 1}
        assert got["mean"] == [1.5, 1.5]  # batch-norm running statistics: the mean over ranks
        assert got["var"] == [3.0, 3.0]
        assert got["grad"] == [3.0, 3.0]  # gradients: the sum over ranks
        assert got["loss"] == 1.0
        assert got["obj"] == {"from": 0}  # broadcast from rank 0
        assert got["gathered"] == [0, 10]


def test_a_finished_training_rank_exits_0_with_its_output_flushed():
    import subprocess
    import sys

    code = ("import sys; from kd2deploy.distill import dist; print('rank 1 done', end=''); "
            "sys.stderr.write('no newline'); dist.exit_training_rank(); sys.exit(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # os._exit(0): nothing after it runs, no interpreter shutdown to race
    assert r.stdout == "rank 1 done" and r.stderr == "no newline"
