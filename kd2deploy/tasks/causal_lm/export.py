"""ONNX export of a causal LM with its KV cache (optimum ``text-generation-with-past``), the parity check on real
sequences, and loading the shipped folder with ``optimum.onnxruntime.ORTModelForCausalLM``.

The folder written holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``, ``position_ids`` where the
family uses them, and ``past_key_values.N.key/value``; outputs ``logits`` and ``present.N.key/value``), the
config, generation config and the tokenizer files.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd2deploy.errors import StageError

log = logging.getLogger("kd2deploy")
TASK = "text-generation-with-past"


def save_hf(model, tokenizer, folder: Path) -> Path:
    """The PyTorch model and its tokenizer as a Hugging Face folder (what optimum's exporter reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def export_with_past(hf_folder: Path, out: Path) -> dict[str, Any]:
    """Exports ``hf_folder`` to ``out/model.onnx`` with optimum's ``main_export(..., task=TASK)``; the tokenizer
    and configs are copied beside it. optimum's own validation is off: :func:`parity` checks on real text."""
    from optimum.exporters.onnx import main_export

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sink = io.StringIO()
    try:
        with redirect_stdout(sink), redirect_stderr(sink):
            main_export(str(hf_folder), str(out), task=TASK, local_files_only=True, do_validation=False,
                        device="cpu")
    except Exception as e:  # noqa: BLE001 - one line naming the exporter's reason
        raise StageError(f"{hf_folder}: optimum could not export {TASK} ({type(e).__name__}: "
                         f"{str(e).strip()[:300]})") from e
    for f in hf_folder.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model", ".jinja") and not (out / f.name).exists():
            shutil.copyfile(f, out / f.name)
    if not (out / "model.onnx").is_file():
        raise StageError(f"{out}: the exporter wrote no model.onnx")
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("model.onnx"))
    return {"exporter": "optimum.exporters.onnx.main_export", "task": TASK,
            "seconds": round(time.perf_counter() - t0, 2),
            "files": files, "onnx_bytes": size}


def load_shipped(folder: Path):
    """The shipped folder as ``ORTModelForCausalLM`` (CPU provider) and its tokenizer."""
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    model = ORTModelForCausalLM.from_pretrained(str(folder), provider="CPUExecutionProvider", use_cache=True)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tok


def _greedy(model, ids: torch.Tensor, new_tokens: int, pad: int) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    return out[0, ids.shape[1]:].tolist()


@torch.inference_mode()
def parity(torch_model, onnx_folder: Path, ids: torch.Tensor, new_tokens: int, atol: float,
           pad_token_id: int = 0) -> dict[str, Any]:
    """PyTorch vs the exported model on real sequences ``ids`` ``(n, L)``: max |delta logit| over every position
    of a full forward pass, and greedy decoding from each sequence's first half for ``new_tokens`` tokens
    through the KV cache (the ONNX side through ``ORTModelForCausalLM.generate``)."""
    ort_model, _ = load_shipped(onnx_folder)
    torch_model.eval()
    diffs, agree, total, exact = [], 0, 0, 0
    for row in ids:
        x = row.unsqueeze(0)
        a = torch_model(input_ids=x).logits.float().numpy()
        b = ort_model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        b = (b.numpy() if hasattr(b, "numpy") else np.asarray(b)).astype(np.float32)
        diffs.append(float(np.abs(a - b).max()))
        prompt = x[:, : max(1, x.shape[1] // 2)]
        ta = _greedy(torch_model, prompt, new_tokens, pad_token_id)
        tb = _greedy(ort_model, prompt, new_tokens, pad_token_id)
        same = [int(p == q) for p, q in zip(ta, tb, strict=False)]
        first_diff = same.index(0) if 0 in same else len(same)
        agree += first_diff  # tokens agreeing before the first divergence (later ones follow different prefixes)
        total += new_tokens
        exact += int(ta == tb)
    max_diff = max(diffs)
    return {"max_abs_logit_diff": max_diff, "atol": atol, "within_atol": max_diff <= atol,
            "greedy_agreement": agree / total, "greedy_exact_sequences": exact, "sequences": len(ids),
            "new_tokens": new_tokens,
            "method": "full forward on real test sequences (all positions) and greedy generate of new_tokens from "
                      "each sequence's first half; agreement = tokens equal before the first divergence / all"}


def _copy_beside(src_folder: Path, out_folder: Path) -> Path:
    """``out_folder`` with every file of ``src_folder`` but the model (config, tokenizer), and a work folder."""
    out_folder.mkdir(parents=True, exist_ok=True)
    for f in src_folder.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copyfile(f, out_folder / f.name)
    work = out_folder / ".work"
    work.mkdir(exist_ok=True)
    return work


def int8_dynamic(src_folder: Path, out_folder: Path, cfg: Any = None) -> dict[str, Any]:
    """An int8-dynamic copy of an exported folder (``onnxruntime.quantization.quantize_dynamic``, QInt8 weights,
    per-tensor), written as another loadable folder."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    work = _copy_beside(src_folder, out_folder)
    try:
        quantize_dynamic(str(src_folder / "model.onnx"), str(work / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=False)
        shutil.move(str(work / "model.onnx"), str(out_folder / "model.onnx"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"kind": "int8-dynamic", "maker": "onnxruntime.quantization.quantize_dynamic(QInt8, per-tensor)",
            "seconds": round(time.perf_counter() - t0, 2),
            "onnx_bytes": (out_folder / "model.onnx").stat().st_size}


def int4_weight_only(src_folder: Path, out_folder: Path, cfg: Any = None) -> dict[str, Any]:
    """A weight-only int4 copy of an exported folder: every MatMul with a constant weight becomes onnxruntime's
    ``MatMulNBits`` (4-bit blocks of ``cfg.int4_block_size`` along the input axis, symmetric, activations in
    float32; ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer``), which the CPU provider runs."""
    import onnx

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # the module calls logging.basicConfig(level=INFO) on import: every library's INFO would reach the terminal
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(level)

    block = getattr(cfg, "int4_block_size", 32)
    t0 = time.perf_counter()
    work = _copy_beside(src_folder, out_folder)
    try:
        q = MatMulNBitsQuantizer(onnx.load(str(src_folder / "model.onnx")), bits=4, block_size=block,
                                 is_symmetric=True, accuracy_level=4)
        q.process()
        q.model.save_model_to_file(str(work / "model.onnx"), use_external_data_format=False)
        quantised = sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node)
        if not quantised:
            raise StageError(f"{src_folder / 'model.onnx'}: no MatMul with a constant weight to quantise")
        shutil.move(str(work / "model.onnx"), str(out_folder / "model.onnx"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"kind": "int4-weight-only",
            "maker": f"onnxruntime MatMulNBitsQuantizer(bits=4, block_size={block}, symmetric, accuracy_level=4)",
            "matmuls_quantised": quantised, "seconds": round(time.perf_counter() - t0, 2),
            "onnx_bytes": (out_folder / "model.onnx").stat().st_size}
