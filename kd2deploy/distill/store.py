"""The teacher-output store: the teacher's logits on the fixed transfer set, computed once and kept on disk.

Without it, every student run (every rerun, every sweep point) runs the teacher over the transfer set again; with
per-batch teacher calls (as per-epoch distillation does) the teacher runs every epoch for every student. The
store computes the outputs once — sharded across the ranks of a distributed run: each rank runs the teacher on its
contiguous slice of the transfer set, the slices are gathered, rank 0 writes — and every later student run reads
them back memory-mapped (``np.load(mmap_mode="r")``), a batch at a time.

An entry is ``<out>/.cache/teacher_outputs/<key>/`` holding ``logits.npy`` (full logits, ``(n, classes)`` or
``(n, members, classes)`` for an ensemble) or, with ``top_k``, ``topk_values.npy`` + ``topk_indices.npy`` +
``rest_logsumexp.npy``, and ``meta.json``. It is written into a temporary folder and renamed into place, so a
reader never sees half an entry. The key is a sha256 (``cache.stage_key``) of the teacher's weights and buffers
(which include the input standardisation), the transfer-set inputs' bytes, the data section of the config and
``top_k``: a retrained teacher, other data or other preprocessing give another key.

Top-k (``distill.teacher_store.top_k: k``): per sample the k largest logits and their classes are stored, and
the log-sum-exp of the other C - k logits (``rest``). A batch is read back as dense logits: the stored values at
their classes and ``rest - log(C - k)`` at every other class. At temperature 1 this is exact for the k stored
classes' probabilities and for the total probability of the others, which is spread evenly over them; at T != 1
the kept classes keep their exact logits and the others share one logit, so the soft targets are an
approximation there (the usual price of top-k distillation). ``top_k: null`` stores the full logits (exact).

The store only applies when the teacher's outputs on the transfer set are fixed: with per-step shifts or mixup
(``distill.transfer``) the teacher must see each batch's augmented view, and the pipeline falls back to running
the teacher on every batch (it says so in the log and in results.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("kd2deploy")

FORMAT = 1


def tensor_digest(tensors: dict[str, torch.Tensor] | torch.Tensor) -> str:
    """sha256 of tensors' names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else [("", tensors)]
    for name, t in sorted(items, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def store_key(teacher: torch.nn.Module, x: torch.Tensor, data_cfg: dict[str, Any], top_k: int | None) -> str:
    """The entry's key: teacher weights (+ standardisation buffers), transfer-set inputs, data config, top_k."""
    from kd2deploy.cache import stage_key

    return stage_key({"format": FORMAT, "teacher": tensor_digest(teacher.state_dict()), "inputs": tensor_digest(x),
                    "data": data_cfg, "top_k": top_k})


class StoredLogits:
    """Teacher logits read from a store entry a batch at a time: ``outputs[idx]`` (``idx`` of any shape) gives dense
    logits, reconstructed from top-k when the entry holds top-k."""

    def __init__(self, folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.dir, self.arrays, self.meta = folder, arrays, meta
        self.top_k = meta.get("top_k")
        self.num_classes = int(meta["num_classes"])
        self.shape = tuple(meta["shape"])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        i = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        if self.top_k is None:
            return torch.from_numpy(np.ascontiguousarray(self.arrays["logits"][i]))
        values = torch.from_numpy(np.ascontiguousarray(self.arrays["topk_values"][i]))
        indices = torch.from_numpy(np.ascontiguousarray(self.arrays["topk_indices"][i]))
        rest = torch.from_numpy(np.ascontiguousarray(self.arrays["rest_logsumexp"][i]))
        return densify(values, indices, rest, self.num_classes)

    def dense(self) -> torch.Tensor:
        return self[torch.arange(len(self))]


def topk_parts(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-k values, their class indices, log-sum-exp of the other logits) along the last axis."""
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return values, indices, rest


def densify(values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense logits from top-k: stored values at their classes, ``rest - log(C - k)`` everywhere else."""
    k = values.shape[-1]
    fill = rest - math.log(num_classes - k) if num_classes > k else rest
    out = fill.unsqueeze(-1).expand(*values.shape[:-1], num_classes).clone()
    return out.scatter(-1, indices, values)


def load(folder: Path) -> StoredLogits | None:
    """The entry in ``folder`` memory-mapped, or None when absent or unreadable."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
        if meta.get("format") != FORMAT or any(a.shape[0] != meta["shape"][0] for a in arrays.values()):
            raise ValueError("another format, or arrays of the wrong length")
    except Exception as e:  # noqa: BLE001 - a damaged entry is recomputed
        log.warning("teacher store %s not usable (%s: %s); recomputing", folder, type(e).__name__, e)
        return None
    return StoredLogits(folder, arrays, meta)


def write(folder: Path, logits: torch.Tensor, top_k: int | None) -> None:
    """Writes an entry atomically: a temporary folder beside it, renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if top_k is None:
            arrays = {"logits": logits}
        else:
            values, indices, rest = topk_parts(logits, top_k)
            arrays = {"topk_values": values, "topk_indices": indices, "rest_logsumexp": rest}
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a.detach().cpu().numpy())
        meta = {"format": FORMAT, "top_k": top_k, "num_classes": int(logits.shape[-1]),
                "shape": list(logits.shape), "arrays": sorted(arrays)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():  # only reached when the entry there was not usable: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another run stored it first: theirs is as good
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def teacher_outputs(teacher: torch.nn.Module, x: torch.Tensor, root: Path, data_cfg: dict[str, Any],
                    top_k: int | None = None, logits_of=None) -> tuple[StoredLogits, dict[str, Any]]:
    """The teacher's logits on ``x`` from the store under ``root``, computed (sharded over ranks) and written by
    rank 0 first when absent. Returns (outputs, a record for results.json). Every rank must call it.

    ``logits_of(a, b)`` computes the logits of samples ``a:b`` when the teacher does not take ``x`` as it is
    (text: ``x`` is the padded token ids that key the entry; the task's own batching computes the logits).
    """
    import time

    from kd2deploy.distill import dist
    from kd2deploy.distill.teacher import teacher_logits_of

    key = store_key(teacher, x, data_cfg, top_k)
    folder = Path(root) / key
    t0 = time.perf_counter()
    found = dist.broadcast_object(load(folder) is not None if dist.is_main() else None)
    if not found:
        a, b = dist.my_slice(len(x))
        part = logits_of(a, b) if logits_of is not None else teacher_logits_of(teacher, x[a:b])
        parts = dist.all_gather_object(part)
        if dist.is_main():
            write(folder, torch.cat(parts), top_k)
        dist.barrier()  # rank 0's entry is in place
    outputs = load(folder)
    # another node without a shared file system does not see rank 0's folder: rank 0 sends the logits
    if any(dist.all_gather_object(outputs is None)):
        if outputs is None and dist.is_main():
            from kd2deploy.errors import StageError

            raise StageError(f"teacher store {folder}: the entry just written cannot be read back")
        dense = dist.broadcast_object(outputs.dense() if dist.is_main() else None)
        outputs = outputs if outputs is not None else _in_memory(dense, top_k)
    record = {"key": key, "dir": str(folder), "hit": bool(found), "top_k": top_k, "seconds": time.perf_counter() - t0,
              "read": "memory-mapped .npy, a batch at a time"}
    log.info("teacher store %s: %s (%.2f s)", folder, "reused" if found else "computed and stored",
             record["seconds"])
    return outputs, record


def _in_memory(logits: torch.Tensor, top_k: int | None) -> StoredLogits:
    if top_k is None:
        arrays = {"logits": logits.numpy()}
    else:
        v, i, r = topk_parts(logits, top_k)
        arrays = {"topk_values": v.numpy(), "topk_indices": i.numpy(), "rest_logsumexp": r.numpy()}
    meta = {"format": FORMAT, "top_k": top_k, "num_classes": int(logits.shape[-1]), "shape": list(logits.shape),
            "arrays": sorted(arrays)}
    return StoredLogits(Path("."), arrays, meta)
