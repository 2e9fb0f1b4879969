"""Fine-tuning the teacher's head and distilling the student (logit KD + hidden + attention terms)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kd2deploy.errors import StageError

log = logging.getLogger("kd2deploy")


class Encoded:
    """Tokenised texts of one split (unpadded id lists) and labels; batches are padded to their longest text."""

    def __init__(self, tokenizer, texts: list[str], labels: np.ndarray, max_len: int):
        enc = tokenizer(texts, truncation=True, max_length=max_len)
        self.ids: list[list[int]] = enc["input_ids"]
        self.types: list[list[int]] | None = enc.get("token_type_ids")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in idx]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.as_tensor(r)
            mask[k, : len(r)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.types is not None:
            types = torch.zeros((len(rows), n), dtype=torch.long)
            for k, i in enumerate(idx):
                types[k, : len(self.types[i])] = torch.as_tensor(self.types[i])
            out["token_type_ids"] = types
        return out


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i: i + batch_size]


@torch.no_grad()
def predict_logits(model, data: Encoded, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` on every example of ``data`` (eval mode, order kept)."""
    model.eval()
    order = np.argsort([len(r) for r in data.ids], kind="stable")  # similar lengths together: less padding
    out = np.concatenate([model(**data.batch(order[i: i + batch_size])).logits.float().numpy()
                          for i in range(0, len(order), batch_size)])
    logits = np.empty_like(out)
    logits[order] = out
    return logits


def accuracy(model, data: Encoded) -> float:
    return float((predict_logits(model, data).argmax(-1) == data.labels.numpy()).mean())


def _optimizer(params, train_cfg, steps: int):
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    warm = int(train_cfg.warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class History:
    """What a text training loop returns besides the model: per-epoch records and the training time."""

    def __init__(self, epochs: list[dict], train_time_s: float):
        self.epochs, self.train_time_s = epochs, train_time_s


def _loop(model, params, train: Encoded, val: Encoded, train_cfg, seed: int, step_loss: Callable,
          on_epoch: Callable[[int, dict], None] | None, checkpoint=None, extra=None) -> tuple[Any, list[dict]]:
    """Shared epoch loop; keeps the weights of the epoch with the best validation accuracy.

    With ``checkpoint`` (a :class:`kd2deploy.distill.resume.Slot`) the loop saves everything it needs at the end
    of every epoch (weights, ``extra`` module such as a projection, optimiser, schedule, batch-order generator,
    torch RNG, history, best weights) and continues from the last complete epoch when the slot holds one.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = train_cfg.epochs * math.ceil(len(train) / train_cfg.batch_size)
    opt, sched = _optimizer(params, train_cfg, steps)
    history: list[dict] = []
    best, best_acc = None, -1.0
    start = 1
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        if extra is not None:
            extra.load_state_dict(saved["extra"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        history, best, best_acc = saved["history"], saved["best"], saved["best_acc"]
        start = int(saved["epoch"]) + 1
    for epoch in range(start, train_cfg.epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        for idx in _batches(len(train), train_cfg.batch_size, rng):
            batch = train.batch(idx)
            loss = step_loss(batch, train.labels[idx], idx)
            if not torch.isfinite(loss):
                raise StageError(f"training loss became {loss.item()} at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_acc = accuracy(model, val)
        seconds = time.perf_counter() - t0
        m = {"epoch": epoch, "loss": float(np.mean(losses)), "val_acc": val_acc, "seconds": seconds,
             "time_s": (history[-1]["time_s"] if history else 0.0) + seconds}  # cumulative: convergence figures
        history.append(m)
        log.info("epoch %d loss %.4f val acc %.4f (%.1f s)", epoch, m["loss"], val_acc, m["seconds"])
        if val_acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), val_acc
        if checkpoint is not None:
            checkpoint.save(epoch, {
                "model": model.state_dict(), "extra": extra.state_dict() if extra is not None else None,
                "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "history": history, "best": best, "best_acc": best_acc})
        if on_epoch:
            on_epoch(epoch, m)
    model.load_state_dict(best)
    model.eval()
    return model, history


def trainable(model, train_cfg) -> list:
    """The parameters a schedule trains: all, less the token embeddings with ``freeze_word_embeddings``."""
    if train_cfg.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def fine_tune(model, train: Encoded, val: Encoded, train_cfg, seed: int, on_epoch=None, checkpoint=None,
              label_smoothing: float = 0.0):
    """Cross-entropy fine-tuning of the whole model (the teacher's new head and encoder; or a control student on
    hard labels, optionally smoothed)."""
    import torch.nn.functional as F

    def step_loss(batch, y, idx):
        return F.cross_entropy(model(**batch).logits, y, label_smoothing=label_smoothing)

    return _loop(model, trainable(model, train_cfg), train, val, train_cfg, seed, step_loss, on_epoch, checkpoint)


def distil(student, teacher, train: Encoded, val: Encoded, distill_cfg, layer_map: list[int], seed: int,
           on_epoch=None, checkpoint=None, teacher_logits=None):
    """Trains ``student`` on the weighted terms of ``distill_cfg`` (TextDistillConfig) against ``teacher``.

    ``teacher_logits`` (the teacher's logits on every training example, in order: a tensor, or the teacher-output
    store's ``StoredLogits``) replace the teacher's forward pass when no term needs its hidden states or
    attentions (logit terms only).
    """
    from kd2deploy.distill.losses import hard_ce, hinton_loss
    from kd2deploy.tasks.text.losses import attention_loss, hidden_loss, make_projection

    terms = {t.loss: t.weight for t in distill_cfg.terms}
    want_hidden, want_attn = "hidden" in terms, "attention" in terms
    torch.manual_seed(seed)
    projection = make_projection(student.config.hidden_size, teacher.config.hidden_size)
    params = trainable(student, distill_cfg.train) + list(projection.parameters())
    teacher.eval()
    kw = {"output_hidden_states": want_hidden, "output_attentions": want_attn}

    online = want_hidden or want_attn or teacher_logits is None

    def step_loss(batch, y, idx):
        if online:
            with torch.no_grad():
                t_out = teacher(**batch, **kw)
            t_logits = t_out.logits
        else:
            t_logits = teacher_logits[torch.as_tensor(idx)]
        s_out = student(**batch, **kw)
        loss = s_out.logits.new_zeros(())
        if "hinton" in terms:
            loss = loss + terms["hinton"] * hinton_loss(s_out.logits, t_logits, y,
                                                        temperature=distill_cfg.temperature,
                                                        alpha=distill_cfg.alpha)
        if "ce" in terms:
            loss = loss + terms["ce"] * hard_ce(s_out.logits, y)
        if want_hidden:
            loss = loss + terms["hidden"] * hidden_loss(s_out.hidden_states, t_out.hidden_states, layer_map,
                                                        projection, batch["attention_mask"])
        if want_attn:
            loss = loss + terms["attention"] * attention_loss(s_out.attentions, t_out.attentions, layer_map,
                                                              batch["attention_mask"])
        return loss

    return _loop(student, params, train, val, distill_cfg.train, seed, step_loss, on_epoch, checkpoint, projection)
