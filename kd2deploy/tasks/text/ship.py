"""The shipped text folder, checked the way a user loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def check_shipped(folder: Path, text: str, max_len: int) -> dict[str, Any]:
    """The shipped folder answers one prediction through plain onnxruntime + tokenizers and through optimum."""
    import json

    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    enc = tok.encode(text)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    feeds = {i.name: np.asarray([arrays[i.name]], dtype=np.int64) for i in sess.get_inputs()}
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    plain = id2label[str(int(sess.run(None, feeds)[0].argmax(-1)[0]))]
    out = {"plain_onnxruntime": plain}
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer

        model = ORTModelForSequenceClassification.from_pretrained(str(folder))
        hf_tok = AutoTokenizer.from_pretrained(str(folder))
        logits = model(**hf_tok([text], truncation=True, max_length=max_len, return_tensors="np")).logits
        out["optimum"] = model.config.id2label[int(np.asarray(logits).argmax(-1)[0])]
    except Exception as e:  # noqa: BLE001 - say why, do not hide the shipped model
        out["optimum_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["agree"] = out.get("optimum") == plain
    return out
