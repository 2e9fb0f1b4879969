"""Evaluation of a causal LM: perplexity, agreement with the teacher, ROUGE-L of greedy continuations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
    """exp(mean next-token cross-entropy) over every predicted token of the packed sequences ``ids`` (all of one
    length), and each sequence's mean NLL (for paired intervals)."""
    model.eval()
    per_seq: list[float] = []
    for i in range(0, len(ids), batch_size):
        b = ids[i: i + batch_size]
        lg = model(input_ids=b).logits[:, :-1].float()
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), b[:, 1:].reshape(-1), reduction="none")
        per_seq += ce.reshape(b.shape[0], -1).mean(1).tolist()
    nll = float(np.mean(per_seq))
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": int(ids[:, 1:].numel()), "per_sequence_nll": per_seq}


@torch.inference_mode()
def agreement(model, ids: torch.Tensor, teacher_outputs, batch_size: int = 8) -> dict[str, Any]:
    """Top-1 next-token agreement with the teacher and mean KL(teacher || student) per token.

    ``teacher_outputs[idx]`` gives the teacher's logits (from the store: with top-k the KL uses the top-k
    reconstruction, exact for the kept tokens and the others' total mass)."""
    model.eval()
    agree, kl_sum, count = 0, 0.0, 0
    for i in range(0, len(ids), batch_size):
        idx = np.arange(i, min(i + batch_size, len(ids)))
        s = model(input_ids=ids[idx]).logits[:, :-1].float()
        t = teacher_outputs[idx][:, :-1].float()
        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
        lp, lq = F.log_softmax(t, -1), F.log_softmax(s, -1)
        kl_sum += float((lp.exp() * (lp - lq)).sum())
        count += s.shape[0] * s.shape[1]
    return {"top1_agreement": agree / count, "mean_kl": kl_sum / count, "tokens": count}


@torch.inference_mode()
def greedy(model, prompt: list[int], new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy continuation of ``prompt`` (new token ids only), through ``model.generate``."""
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=eos_token_id if eos_token_id is not None else 0,
                         eos_token_id=eos_token_id)
    return out[0, x.shape[1]:].tolist()


def rouge_l(references: list[str], hypotheses: list[str]) -> dict[str, Any]:
    """Mean ROUGE-L F1 (``rouge_score``'s RougeScorer, with stemming) of hypotheses against references."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses, strict=True)]
    return {"rougeL_f": float(np.mean(scores)), "per_prompt": [round(s, 4) for s in scores],
            "method": "rouge_score RougeScorer(['rougeL'], use_stemmer=True) F-measure, mean over prompts"}


def continuations(model, tokenizer, prompts, new_tokens: int) -> list[str]:
    """Greedy continuations (decoded text) of held prompts."""
    return [tokenizer.decode(greedy(model, p.ids, new_tokens, tokenizer.eos_token_id), skip_special_tokens=True)
            for p in prompts]


def evaluate(model, tokenizer, test_ids: torch.Tensor, prompts, new_tokens: int, teacher_outputs=None) -> dict:
    """Perplexity, (with ``teacher_outputs``) agreement, and ROUGE-L of greedy continuations."""
    out: dict[str, Any] = {"perplexity": perplexity(model, test_ids)}
    if teacher_outputs is not None:
        out["teacher_agreement"] = agreement(model, test_ids, teacher_outputs)
    hyps = continuations(model, tokenizer, prompts, new_tokens)
    out["rouge"] = rouge_l([p.reference for p in prompts], hyps)
    out["samples"] = [{"continuation": h} for h in hyps[:3]]
    return out
