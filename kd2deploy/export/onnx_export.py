"""ONNX export that proves itself: checker, then parity with PyTorch on the real test inputs."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy.errors import StageError, write_error

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    sha256: str
    opset: int
    exporter: str
    parity: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path.name, "size_bytes": self.size_bytes, "sha256": self.sha256, "opset": self.opset,
                "exporter": self.exporter, "parity": self.parity}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export(model, example, tmp: Path, opset: int, dynamo: bool) -> None:
    import torch

    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if dynamo:
        kwargs.update(dynamo=True, external_data=False, optimize=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
    else:
        kwargs.update(dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping ..."
    sink = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), **kwargs)


def onnx_logits(path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Runs the ONNX file with onnxruntime (CPU) over ``x`` in chunks; returns the logits."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def export_onnx(model, x_test: np.ndarray, y_test: np.ndarray, path: Path, cfg, name: str) -> ExportResult:
    """Exports ``model`` (eval mode) to ``path`` with a dynamic batch axis and the weights inside the file.

    The file is written under a temporary name and renamed only after ``onnx.checker`` and the parity check
    pass, so a failed export leaves nothing that could be mistaken for a good file.

    Raises:
        StageError: export failed, or logits / argmax differ from PyTorch beyond ``cfg.atol`` /
            ``cfg.min_argmax_agreement`` on the test inputs.
    """
    import onnx
    import torch

    model.eval()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    example = torch.from_numpy(x_test[:2].copy())
    try:
        try:
            _export(model, example, tmp, cfg.opset, cfg.dynamo)
        except OSError as e:  # disk full, read-only folder: not the exporter's fault
            raise write_error(path, e) from e
        except Exception as e:  # noqa: BLE001 - exporter failures come from deep inside torch
            raise StageError(
                f"export of {name} to ONNX failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                f"try export.dynamo: {not cfg.dynamo}"
            ) from e
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # noqa: BLE001
            raise StageError(f"{name}: onnx.checker rejected the exported file: {e}") from e
        with torch.inference_mode():
            ref = torch.cat([model(torch.from_numpy(x_test[i : i + 512])) for i in range(0, len(x_test), 512)]).numpy()
        got = onnx_logits(tmp, x_test)
        parity = {
            "max_abs_diff": float(np.max(np.abs(ref - got))),
            "argmax_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
            "n_samples": len(x_test),
            "atol": cfg.atol,
            "accuracy_torch": float(np.mean(ref.argmax(-1) == y_test)),
            "accuracy_onnx": float(np.mean(got.argmax(-1) == y_test)),
        }
        if parity["max_abs_diff"] > cfg.atol or parity["argmax_agreement"] < cfg.min_argmax_agreement:
            raise StageError(
                f"{name}: ONNX parity failed on {len(x_test)} test inputs: max abs diff "
                f"{parity['max_abs_diff']:.3g} (allowed {cfg.atol:g}), argmax agreement "
                f"{parity['argmax_agreement']:.4f} (required {cfg.min_argmax_agreement:g})"
            )
        opset = next((o.version for o in onnx.load(str(tmp)).opset_import if o.domain in ("", "ai.onnx")), cfg.opset)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path, path.stat().st_size, sha256_file(path), int(opset),
                        "torch.onnx dynamo" if cfg.dynamo else "torch.onnx torchscript", parity)
