"""Teacher-output store for token sequences, and the training of one student arm (KD or the CE control).

The store keeps, per token, the teacher's top-k logits, their token ids and the log-sum-exp of the other logits
(the format of :mod:`kd2deploy.distill.store`, read back by its ``load`` as dense logits a batch at a time), so
the teacher runs once over the transfer set however many students train on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd2deploy.distill import store as tstore

log = logging.getLogger("kd2deploy")


@torch.inference_mode()
def logits_of(model, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Float32 logits ``(n, L, vocab)`` of ``model`` on packed sequences (eval mode)."""
    model.eval()
    return torch.cat([model(input_ids=ids[i: i + batch_size]).logits.float() for i in range(0, len(ids), batch_size)])


def store_key(teacher, ids: torch.Tensor, top_k: int | None) -> str:
    from kd2deploy.cache import stage_key

    return stage_key({"format": tstore.FORMAT, "task": "causal-lm",
                      "teacher": tstore.tensor_digest(teacher.state_dict()), "inputs": tstore.tensor_digest(ids),
                      "top_k": top_k})


def teacher_store(teacher, ids: torch.Tensor, root: Path, top_k: int | None, batch_size: int = 4,
                  progress: Callable[[str], object] | None = None) -> tuple[tstore.StoredLogits, dict[str, Any]]:
    """The teacher's logits on ``ids`` from the store under ``root`` (computed a batch at a time, top-k parts
    kept, written atomically when absent). Returns (outputs indexable by sequence, a record for results.json)."""
    t0 = time.perf_counter()
    key = store_key(teacher, ids, top_k)
    folder = Path(root) / key
    found = tstore.load(folder)
    if found is None:
        parts: dict[str, list[np.ndarray]] = {}
        vocab = None
        for i in range(0, len(ids), batch_size):
            lg = logits_of(teacher, ids[i: i + batch_size], batch_size)
            vocab = lg.shape[-1]
            if top_k is None:
                parts.setdefault("logits", []).append(lg.numpy())
            else:
                v, ix, rest = tstore.topk_parts(lg, top_k)
                parts.setdefault("topk_values", []).append(v.numpy())
                parts.setdefault("topk_indices", []).append(ix.to(torch.int32).numpy())
                parts.setdefault("rest_logsumexp", []).append(rest.numpy())
            if progress:
                progress(f"teacher store {min(i + batch_size, len(ids))}/{len(ids)}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, chunks in parts.items():
            np.save(tmp / f"{name}.npy", np.concatenate(chunks))
        meta = {"format": tstore.FORMAT, "top_k": top_k, "num_classes": int(vocab),
                "shape": [int(ids.shape[0]), int(ids.shape[1]), int(vocab)], "arrays": sorted(parts)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        found_now = tstore.load(folder)
        assert found_now is not None
        outputs, hit = found_now, False
    else:
        outputs, hit = found, True
    rec = {"key": key, "dir": str(folder), "hit": hit, "top_k": top_k, "sequences": int(ids.shape[0]),
           "seconds": round(time.perf_counter() - t0, 2)}
    return outputs, rec


def teacher_batch(outputs, idx, loss: str):
    """The stored teacher outputs of sequences ``idx``: top-k parts for forward KL (no dense logits built),
    dense logits otherwise."""
    if getattr(outputs, "top_k", None) is not None and loss == "forward_kl":
        a = outputs.arrays
        return (torch.from_numpy(np.ascontiguousarray(a["topk_values"][idx])),
                torch.from_numpy(np.ascontiguousarray(a["topk_indices"][idx])).long(),
                torch.from_numpy(np.ascontiguousarray(a["rest_logsumexp"][idx])))
    return outputs[idx]


def _schedule(opt, train_cfg, steps: int):
    warm = int(train_cfg.warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _on_policy_batch(student, teacher, ids: torch.Tensor, new_tokens: int, gen: torch.Generator):
    """GKD's on-policy step: the student samples a continuation of each sequence's first half; returns the
    joined sequences, the teacher's logits on them and the mask of positions that predict generated tokens."""
    half = ids.shape[1] // 2
    prompt = ids[:, :half]
    student.eval()
    with torch.no_grad():
        seq = prompt
        past = None
        out = student(input_ids=seq, use_cache=True)
        for _ in range(new_tokens):
            probs = torch.softmax(out.logits[:, -1].float(), -1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            seq = torch.cat([seq, nxt], 1)
            past = out.past_key_values
            out = student(input_ids=nxt, past_key_values=past, use_cache=True)
        t_logits = teacher(input_ids=seq).logits.float()
    student.train()
    mask = torch.zeros(seq.shape, dtype=torch.long)
    mask[:, half - 1: -1] = 1  # positions whose next token was generated
    return seq, t_logits, mask


def train_arm(student, train_ids: torch.Tensor, cfg, *, seed: int, arm: str, teacher_outputs=None, teacher=None,
              progress: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Trains ``student`` in place: ``arm`` "kd" (``cfg``'s mixed loss against the stored teacher logits, with
    on-policy steps at ``cfg.on_policy_fraction``) or "ce" (plain next-token cross-entropy, the control).

    ``cfg`` is an LMDistillConfig; the batch order and the on-policy draws follow ``seed``.
    """
    from kd2deploy.tasks.causal_lm.losses import divergence, mixed_loss

    if arm not in ("kd", "ce"):
        raise ValueError(f"unknown arm {arm!r}; valid: kd, ce")
    if arm == "kd" and teacher_outputs is None:
        raise ValueError("arm 'kd' needs the teacher outputs")
    if arm == "kd" and cfg.on_policy_fraction > 0 and teacher is None:
        raise ValueError("on-policy steps need the teacher model")
    tc = cfg.train
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_ids)
    per_epoch = math.ceil(n / tc.batch_size)
    steps = per_epoch * tc.epochs
    if getattr(cfg, "freeze_embeddings", False):
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = _schedule(opt, tc, steps)
    student.train()
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    step = on_policy = 0
    for _epoch in range(tc.epochs):
        order = rng.permutation(n)
        for i in range(0, n, tc.batch_size):
            idx = np.sort(order[i: i + tc.batch_size])
            ids = train_ids[idx]
            if arm == "kd" and cfg.on_policy_fraction > 0 and rng.random() < cfg.on_policy_fraction:
                seq, t_logits, mask = _on_policy_batch(student, teacher, ids, cfg.on_policy_new_tokens, gen)
                s_logits = student(input_ids=seq).logits
                loss = divergence(s_logits[:, :-1], t_logits[:, :-1], cfg.loss, temperature=cfg.temperature,
                                  beta=cfg.beta, skew=cfg.skew, mask=mask[:, :-1])
                parts = {"kd_on_policy": float(loss.detach())}
                on_policy += 1
            else:
                t_logits = teacher_batch(teacher_outputs, idx, cfg.loss) if arm == "kd" else None
                s_logits = student(input_ids=ids).logits
                loss, parts = mixed_loss(s_logits, t_logits, ids, cfg if arm == "kd" else _CE)
            if not torch.isfinite(loss):
                from kd2deploy.errors import StageError

                raise StageError(f"{arm} seed {seed}: loss became {float(loss)} at step {step}; lower "
                                 "causal_lm.distill.train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            history.append({"step": step, "loss": float(loss.detach()), **parts})
            if progress and (step % 10 == 0 or step == steps):
                progress(f"{arm} seed {seed}: step {step}/{steps} loss {history[-1]['loss']:.3f}")
    student.eval()
    return {"arm": arm, "seed": seed, "steps": steps, "on_policy_steps": on_policy, "epochs": tc.epochs,
            "seconds": round(time.perf_counter() - t0, 2), "final_loss": history[-1]["loss"] if history else None,
            "loss_first_last": [history[0]["loss"], history[-1]["loss"]] if history else None}


class _CEOnly:
    alpha = 0.0


_CE = _CEOnly()
