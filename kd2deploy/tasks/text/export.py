"""ONNX export of a sequence classifier with its tokenizer beside it, and the proof that it matches PyTorch.

The folder written loads with ``optimum.onnxruntime.ORTModelForSequenceClassification.from_pretrained(folder)``
and with plain onnxruntime (``folder/model.onnx``) plus ``tokenizers.Tokenizer.from_file(folder/tokenizer.json)``.
Batch and sequence axes are dynamic.
"""

from __future__ import annotations

import io
import logging
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy.errors import StageError

log = logging.getLogger("kd2deploy")


def save_hf(model, tokenizer, folder: Path) -> Path:
    """The PyTorch model and tokenizer as a Hugging Face folder (what optimum's exporter reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def export_folder(hf_folder: Path, out: Path, *, atol: float, validate: bool) -> dict[str, Any]:
    """Exports ``hf_folder`` to ``out/model.onnx`` with optimum (output validation on), or torch.onnx when
    optimum is unavailable or fails; copies the tokenizer and config beside it."""
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    sink = io.StringIO()
    caught: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                caught.append(record.getMessage()[:300])
                log.info("optimum: %s", record.getMessage())

    opt_log = logging.getLogger("optimum")
    saved = opt_log.handlers[:], opt_log.propagate
    opt_log.handlers, opt_log.propagate = [_Collect()], False  # its warnings go to run.log and the results
    try:
        from optimum.exporters.onnx import main_export

        with redirect_stdout(sink), redirect_stderr(sink):
            main_export(str(hf_folder), str(out), task="text-classification", local_files_only=True,
                        do_validation=validate, atol=atol, device="cpu")
        info.update(exporter="optimum.exporters.onnx.main_export", validation=validate, optimum_atol=atol)
        warned = [m for m in caught if "atol" in m.lower() or "not within" in m.lower()]
        if warned:
            info["optimum_validation_warning"] = warned[-1]
    except Exception as e:  # noqa: BLE001 - fall back to torch.onnx, saying why
        log.warning("optimum export failed (%s: %s); falling back to torch.onnx", type(e).__name__, e)
        info.update(exporter="torch.onnx.export (legacy)", optimum_error=f"{type(e).__name__}: {str(e)[:300]}")
        _torch_export(hf_folder, out / "model.onnx")
    finally:
        opt_log.handlers, opt_log.propagate = saved
    for f in hf_folder.iterdir():  # tokenizer and config beside the model (optimum copies most already)
        if f.is_file() and f.suffix in (".json", ".txt") and not (out / f.name).exists():
            shutil.copyfile(f, out / f.name)
    if not (out / "model.onnx").is_file():
        raise StageError(f"{out}: the exporter wrote no model.onnx")
    if not (out / "tokenizer.json").is_file():
        raise StageError(f"{out}: no tokenizer.json beside model.onnx (a fast tokenizer is needed)")
    return info


def _torch_export(hf_folder: Path, path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(hf_folder), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_folder), local_files_only=True)
    enc = tok(["an example", "another, longer example text"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes["logits"] = {0: "batch_size"}

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args, strict=True))).logits

    torch.onnx.export(Wrapped(model), tuple(enc[n] for n in names), str(path), input_names=names,
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)


def onnx_feeds(session, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of a tokeniser output that ``session`` takes, as int64."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in enc and n != "token_type_ids"]
    if missing:
        raise StageError(f"the ONNX model takes {missing}, which the tokenizer does not produce")
    ref = enc["input_ids"]
    return {n: np.asarray(enc[n], dtype=np.int64) if n in enc else np.zeros_like(ref, dtype=np.int64)
            for n in names}


def onnx_logits(model_path: Path, tokenizer, texts: list[str], max_len: int, batch_size: int = 32) -> np.ndarray:
    """Logits of an ONNX classifier on ``texts`` (tokenised like in training)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i: i + batch_size], truncation=True, max_length=max_len, padding=True,
                        return_tensors="np")
        out.append(sess.run(None, onnx_feeds(sess, dict(enc)))[0])
    return np.concatenate(out)


def parity(torch_logits: np.ndarray, onnx_out: np.ndarray, labels: np.ndarray, atol: float) -> dict[str, Any]:
    """PyTorch vs ONNX on the test split: max |Δ logit|, argmax agreement, both accuracies."""
    diff = float(np.abs(torch_logits - onnx_out).max())
    return {
        "max_abs_diff": diff, "atol": atol, "within_atol": diff <= atol,
        "argmax_agreement": float((torch_logits.argmax(-1) == onnx_out.argmax(-1)).mean()),
        "accuracy_torch": float((torch_logits.argmax(-1) == labels).mean()),
        "accuracy_onnx": float((onnx_out.argmax(-1) == labels).mean()),
        "n_samples": len(labels),
    }
