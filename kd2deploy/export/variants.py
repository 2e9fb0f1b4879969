"""Compressed variants of an exported ONNX model: INT8 (static, dynamic), FP16 and offline graph optimisation.

Every variant is made from the FP32 file that the export stage proved against PyTorch, written atomically, and
judged against that source on the test split: accuracy, parity and, for static INT8, how far test logits
reach beyond the range the calibration data taught the quantiser (values beyond it are clipped). Whether a
variant ships is decided by :mod:`kd2deploy.ship.guard`: compression that is not faster, or costs accuracy, is
not kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from kd2deploy.errors import StageError
from kd2deploy.registry import Registry
from kd2deploy.strict import PositiveInt, Strict

METADATA_KEY = "kd2deploy.variant"
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
DEFAULT_PERCENTILE = 99.999  # onnxruntime's default for CalibrationMethod.Percentile
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME_DOC = "file-name-safe label; default: derived from the settings"
_REDUCE_RANGE_DOC = (
    "7-bit weights: avoids the int16 saturation of u8 x s8 products on x86 CPUs without VNNI (AVX2 only)"
)


# -------------------------------------------------------------------------------------------- configs
class _Variant(Strict):
    """Shared by every variant kind: a name, filled from the settings when left out."""

    name: Annotated[str, Field(pattern=_NAME)] | None = Field(None, description=_NAME_DOC)

    def default_name(self) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _fill_name(self):
        if self.name is None:
            self.__dict__["name"] = self.default_name()  # bypasses validate_assignment's re-validation
        return self


class Int8StaticSpec(_Variant):
    """INT8 weights and activations; activation ranges calibrated on training-split samples.

    ``format: qdq`` inserts QuantizeLinear / DequantizeLinear pairs that onnxruntime fuses into integer
    kernels (the usual choice on CPUs); ``qoperator`` writes QLinearConv / QGemm operators directly.
    """

    kind: Literal["int8-static"] = "int8-static"
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = Field(False, description="one weight scale per output channel instead of per tensor")
    reduce_range: bool = Field(False, description=_REDUCE_RANGE_DOC)
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: PositiveInt = Field(512, description="seeded random subset of the training split")
    percentile: Annotated[float, Field(gt=50, le=100)] | None = Field(
        None,
        description=f"calibration: percentile only; share of |values| kept (default {DEFAULT_PERCENTILE})",
    )

    @model_validator(mode="after")
    def _percentile_needs_method(self) -> Int8StaticSpec:
        if self.calibration != "percentile" and self.percentile is not None:
            raise ValueError(
                f"percentile is only used with calibration: percentile (got {self.calibration!r})"
            )
        if self.calibration == "percentile" and self.percentile is None:
            self.__dict__["percentile"] = DEFAULT_PERCENTILE  # resolved, so it shows in the run's config
        return self

    def default_name(self) -> str:
        pct = self.percentile if self.percentile is not None else DEFAULT_PERCENTILE
        method = f"percentile{pct:g}" if self.calibration == "percentile" else self.calibration
        name = f"int8-static-{self.format}-{method}"
        name += ("-perchannel" if self.per_channel else "") + ("-reducerange" if self.reduce_range else "")
        default_n = type(self).model_fields["calibration_samples"].default
        return name + (f"-n{self.calibration_samples}" if self.calibration_samples != default_n else "")


class Int8DynamicSpec(_Variant):
    """INT8 weights; activations quantised at run time from each batch's own range (no calibration)."""

    kind: Literal["int8-dynamic"] = "int8-dynamic"
    per_channel: bool = False
    reduce_range: bool = Field(False, description=_REDUCE_RANGE_DOC)
    weight_type: Literal["qint8", "quint8"] = "qint8"

    def default_name(self) -> str:
        return (
            f"int8-dynamic-{self.weight_type}"
            + ("-perchannel" if self.per_channel else "")
            + ("-reducerange" if self.reduce_range else "")
        )


class Fp16Spec(_Variant):
    """Weights and arithmetic in float16. Meant for GPU execution providers: onnxruntime's CPU provider has
    few float16 kernels and inserts casts, so on the CPU it is usually slower (and the shipping guard rejects
    it)."""

    kind: Literal["fp16"] = "fp16"
    keep_io_types: bool = Field(True, description="keep float32 inputs and outputs (a drop-in replacement)")

    def default_name(self) -> str:
        return "fp16" + ("-keepio" if self.keep_io_types else "")


class OptimizedSpec(_Variant):
    """onnxruntime's graph optimisation done once, offline, and saved (``optimized_model_filepath``).

    It saves session start-up time, not inference time (a session optimises at load anyway). Levels extended
    and all may write fused, CPU-specific operators: such a file is for the onnxruntime CPU provider only.
    """

    kind: Literal["optimized"] = "optimized"
    level: Literal["basic", "extended", "all"] = "basic"

    def default_name(self) -> str:
        return f"optimized-{self.level}"


class TransformerFusionSpec(_Variant):
    """onnxruntime's transformer graph fusions (``onnxruntime.transformers.optimizer``): attention, layer norm,
    GELU and embedding subgraphs fused into single operators. For BERT-family encoders (``task: text``)."""

    kind: Literal["transformer-fusion"] = "transformer-fusion"
    model_type: Literal["bert"] = "bert"
    num_heads: Annotated[int, Field(ge=0)] = Field(0, description="attention heads; 0: read from the graph")
    hidden_size: Annotated[int, Field(ge=0)] = Field(0, description="hidden width; 0: read from the graph")

    def default_name(self) -> str:
        return f"fused-{self.model_type}"


VariantSpec = Annotated[
    Int8StaticSpec | Int8DynamicSpec | Fp16Spec | OptimizedSpec | TransformerFusionSpec,
    Field(discriminator="kind"),
]


class VariantsConfig(Strict):
    """Which compressed variants to make, and of which exported models."""

    variants: list[VariantSpec] = Field(default_factory=lambda: [Int8StaticSpec()])
    apply_to: list[Literal["teacher", "student"]] = Field(default_factory=lambda: ["teacher", "student"])

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, v: list) -> list:
        seen: dict[str, int] = {}
        for i, spec in enumerate(v):
            if spec.name in seen:
                raise ValueError(
                    f"variants {seen[spec.name]} and {i} are both named {spec.name!r}; "
                    "give one a distinct name"
                )
            seen[spec.name] = i
        return v

    @field_validator("apply_to")
    @classmethod
    def _unique_models(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"apply_to lists a model twice: {v}")
        return v


# --------------------------------------------------------------------------------------------- making
Maker = Callable[[Path, Any, Path, Path, np.ndarray], dict[str, Any]]
MAKERS: Registry[Maker] = Registry("variant kind")


def variant_path(src: Path, spec: _Variant, out_dir: Path, stem: str | None = None) -> Path:
    """Where :func:`make_variant` writes ``spec``'s variant of ``src``: ``out_dir/<stem>.<name>.onnx`` (``stem``
    defaults to the source file's)."""
    return Path(out_dir) / f"{stem or Path(src).stem}.{spec.name}.onnx"


def make_variant(src: Path, spec: _Variant, out_dir: Path, calib_x: np.ndarray, stem: str | None = None) -> Path:
    """Makes one compressed variant of the ONNX file ``src``.

    The file is written under a temporary name, checked (``onnx.checker``), stamped with its settings and its
    source's sha256 in the model metadata (key ``kd2deploy.variant``, JSON) and only then renamed into place.

    Args:
        src: the FP32 ONNX file (one float input with the batch on axis 0).
        spec: an :data:`VariantSpec` (its ``kind`` picks the method).
        out_dir: folder for the variant; created if missing.
        calib_x: the training split's inputs; static INT8 calibrates on a seeded subset of
            ``spec.calibration_samples`` of them. Never pass test data here.

    Returns:
        The variant's path, :func:`variant_path`.

    Raises:
        StageError: naming the variant and a one-line reason.
    """
    import onnx

    from kd2deploy.export.onnx_export import sha256_file

    src, out_dir = Path(src), Path(out_dir)
    label = f"variant {spec.name} of {src.name}"
    if not src.is_file():
        raise StageError(f"{label}: source file not found: {src}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = variant_path(src, spec, out_dir, stem)
    tmp = out_dir / f".{dest.stem}.tmp-{os.getpid()}.onnx"
    try:
        with tempfile.TemporaryDirectory(prefix="kd2deploy-variant-") as work, _quiet():
            # in the work folder: onnxruntime's symbolic shape inference, when it gives up (transformer graphs),
            # drops sym_shape_infer_temp.onnx and a large external-data file into the current folder
            src_abs, tmp_abs = src.resolve(), tmp.resolve()  # before the chdir: relative paths name the caller's
            with contextlib.chdir(work):
                calib = calib_x if isinstance(calib_x, dict) else np.asarray(calib_x, dtype=np.float32)
                info = MAKERS.get(spec.kind)(src_abs, spec, tmp_abs, Path(work), calib)
            model = onnx.load(str(tmp))
            onnx.checker.check_model(model)
            meta = {
                "spec": spec.model_dump(mode="json"),
                "source": src.name,
                "source_sha256": sha256_file(src),
            }
            meta.update(info)
            kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
            del model.metadata_props[:]
            for key, value in [*kept, (METADATA_KEY, json.dumps(meta, sort_keys=True))]:
                model.metadata_props.add(key=key, value=value)
            onnx.save(model, str(tmp))
        os.replace(tmp, dest)
    except StageError as e:
        raise StageError(f"{label}: {e}") from e
    except Exception as e:  # noqa: BLE001 - quantiser failures come from deep inside onnxruntime
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise StageError(f"{label} failed: {type(e).__name__}: {first}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the quantiser's advice lines (root-logger warnings, prints, progress) while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, work: Path) -> Path:
    """onnxruntime's recommended step before quantising: shape inference and basic graph optimisation
    (batch norm folded into the convolution, so one scale covers the fused weight)."""
    from onnxruntime.quantization import quant_pre_process

    out = work / "preprocessed.onnx"
    quant_pre_process(str(src), str(out))
    return out


def _preprocess_or_skip(src: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """The preprocessed model and ``{}``; ``src`` itself and why when preprocessing fails (e.g. symbolic shape
    inference on a transformer graph: it is then quantised as is)."""
    try:
        return _preprocess(src, work), {}
    except Exception as e:  # noqa: BLE001 - any failure of onnxruntime's preprocessing: quantise as is
        return src, {"preprocessing": f"skipped ({type(e).__name__}: {str(e).strip()[:120]})"}


def calibration_subset(calib_x: np.ndarray | dict[str, np.ndarray], n: int, seed: int = CALIBRATION_SEED):
    """A seeded random subset of ``n`` rows (all rows, in order, when there are no more than ``n``); for a dict of
    inputs (a text model's token ids, mask, ...) the same rows of every input."""
    first = next(iter(calib_x.values())) if isinstance(calib_x, dict) else calib_x
    if len(first) == 0:
        raise StageError("static INT8 needs calibration samples, and the training split given is empty")
    if len(first) <= n:
        return calib_x
    rows = np.sort(np.random.default_rng(seed).choice(len(first), size=n, replace=False))
    return {k: v[rows] for k, v in calib_x.items()} if isinstance(calib_x, dict) else calib_x[rows]


class _Reader:
    """A ``CalibrationDataReader``: the calibration samples in batches, as feeds (input name -> rows)."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH) -> None:
        n = len(next(iter(feeds.values())))
        self._batches = [{k: np.ascontiguousarray(v[i : i + batch]) for k, v in feeds.items()}
                         for i in range(0, n, batch)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def _only_input(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    if len(names) != 1:
        raise StageError(f"{path.name}: variants need a model with one input, this one takes {names}")
    return names[0]


def _reader_class():
    """``_Reader`` registered as a subclass of onnxruntime's abstract CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader

    CalibrationDataReader.register(_Reader)
    return _Reader


@MAKERS.register("int8-static")
def _int8_static(
    src: Path, spec: Int8StaticSpec, tmp: Path, work: Path, calib_x: np.ndarray
) -> dict[str, Any]:
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    pre, info = _preprocess_or_skip(src, work)
    x = calibration_subset(calib_x, spec.calibration_samples)
    reader = _reader_class()(x if isinstance(x, dict) else {_only_input(pre): x})
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[spec.calibration]
    extra: dict[str, Any] = {}
    if spec.calibration == "percentile":
        extra["CalibPercentile"] = spec.percentile if spec.percentile is not None else DEFAULT_PERCENTILE
    kwargs: dict[str, Any] = {}
    cache = work / "calibration.json"
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # absent in older releases
        kwargs["calibration_cache_path"] = str(cache)
    out = work / "quantized.onnx"  # helper files stay in the work folder (as for int8-dynamic)
    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ if spec.format == "qdq" else QuantFormat.QOperator,
        per_channel=spec.per_channel,
        reduce_range=spec.reduce_range,
        calibrate_method=method,
        extra_options=extra,
        **kwargs,
    )
    os.replace(out, tmp)
    return {
        **info,
        "calibration": {
            "method": spec.calibration,
            "samples": len(next(iter(x.values())) if isinstance(x, dict) else x),
            "from": "training split",
            "seed": CALIBRATION_SEED,
            "output_ranges": _output_ranges(cache, pre),
        }
    }


def _output_ranges(cache: Path, model_path: Path) -> dict[str, list[float]] | None:
    """Calibrated (lowest, highest) of each graph output, from onnxruntime's calibration cache."""
    import onnx

    if not cache.is_file():
        return None
    from onnxruntime.quantization import load_tensors_data

    data = load_tensors_data(cache)
    out = {}
    for o in onnx.load(str(model_path), load_external_data=False).graph.output:
        try:
            lo, hi = data[o.name].range_value
        except (KeyError, AttributeError):
            continue
        out[o.name] = [float(np.min(lo)), float(np.max(hi))]
    return out


@MAKERS.register("int8-dynamic")
def _int8_dynamic(
    src: Path, spec: Int8DynamicSpec, tmp: Path, work: Path, calib_x: np.ndarray
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, info = _preprocess_or_skip(src, work)
    weight_type = QuantType.QInt8 if spec.weight_type == "qint8" else QuantType.QUInt8
    # Written inside the temporary work folder (the quantiser leaves helper files beside its output), then
    # moved to ``tmp``: a transformer graph's helper files never land in the run folder.
    out = work / "quantized.onnx"
    quantize_dynamic(
        str(pre),
        str(out),
        per_channel=spec.per_channel,
        reduce_range=spec.reduce_range,
        weight_type=weight_type,
    )
    os.replace(out, tmp)
    return info


@MAKERS.register("transformer-fusion")
def _transformer_fusion(
    src: Path, spec: TransformerFusionSpec, tmp: Path, work: Path, calib_x: np.ndarray
) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type=spec.model_type, num_heads=spec.num_heads,
                           hidden_size=spec.hidden_size, opt_level=0)
    model.save_model_to_file(str(tmp))
    return {"fused_operators": {k: v for k, v in model.get_fused_operator_statistics().items() if v}}


@MAKERS.register("fp16")
def _fp16(src: Path, spec: Fp16Spec, tmp: Path, work: Path, calib_x: np.ndarray) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=spec.keep_io_types))
    model.topological_sort()  # keep_io_types appends its input Casts at the end of the node list
    onnx.save(model.model, str(tmp))
    return {}


@MAKERS.register("optimized")
def _optimized(src: Path, spec: OptimizedSpec, tmp: Path, work: Path, calib_x: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    from kd2deploy.bench.harness import GRAPH_OPTIMIZATION_LEVELS

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[spec.level])
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    if not tmp.is_file():
        raise StageError("onnxruntime wrote no optimised model")
    return {"optimized_for": "CPUExecutionProvider", "onnxruntime": ort.__version__}


# ------------------------------------------------------------------------------------------ judging
def read_variant_metadata(path: Path) -> dict[str, Any] | None:
    """The settings :func:`make_variant` stamped into the file, or None for a file it did not make."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def variant_logits(path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Runs ``path`` with onnxruntime's CPU provider over ``x`` in chunks; float32 logits.

    Inputs are cast to the model's input type (float16 for an FP16 variant that did not keep its I/O types).

    Raises:
        StageError: onnxruntime cannot load or run the file on the CPU (e.g. a missing float16 kernel).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.asarray(x).astype(_NP_TYPES.get(inp.type, np.float32), copy=False)
        chunks = [sess.run(None, {inp.name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise StageError(f"{Path(path).name}: onnxruntime (CPU) cannot run it: {first}") from e
    return np.concatenate(chunks).astype(np.float32)


def quantized_output_range(path: Path) -> dict[str, list[float]]:
    """For each graph output produced by a DequantizeLinear: the real range its INT8 grid can represent.

    Values outside it are clipped. Per-tensor scales only (the output activation is always per tensor).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for o in graph.output:
        node = producer.get(o.name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            continue
        scale = float(np.asarray(inits[node.input[1]]).reshape(-1)[0])
        zp_arr = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zp = 0 if zp_arr is None else int(np.asarray(zp_arr).reshape(-1)[0])
        dtype = np.uint8 if zp_arr is None else np.asarray(zp_arr).dtype
        info = np.iinfo(dtype)
        out[o.name] = [(info.min - zp) * scale, (info.max - zp) * scale]
    return out


def evaluate_variant(path: Path, src_path: Path, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Judges a variant against its FP32 source on the test split.

    Returns:
        ``name``, ``kind``, ``path`` (file name), ``size_bytes``, ``size_ratio`` (source / variant),
        ``sha256``, ``accuracy``, ``accuracy_source``, ``accuracy_drop_pp``, ``parity`` (``max_abs_diff``,
        ``mean_abs_diff``, ``argmax_agreement``, ``n_samples``) and ``clipping``: None unless the variant's
        output is quantised (static INT8); then ``source_max_abs_logit`` and ``variant_max_abs_logit`` on
        test, ``calibration_range`` (what calibration saw, when onnxruntime reports it),
        ``representable_range`` (what the INT8 output grid holds), ``n_outside`` of ``n_logits`` and
        ``fraction_outside`` (the source's test logits outside that range, i.e. clipped) and ``calibration``
        (method, samples).

    Raises:
        StageError: onnxruntime cannot run the variant on the CPU.
    """
    from kd2deploy.export.onnx_export import onnx_logits

    return judge_variant(path, src_path, onnx_logits(Path(src_path), x_test), variant_logits(Path(path), x_test),
                         y_test)


def judge_variant(path: Path, src_path: Path, ref: np.ndarray, got: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The record of :func:`evaluate_variant` from outputs already computed: ``ref`` (the FP32 source's) and
    ``got`` (the variant's) on the same inputs, whose labels are ``y`` (any task's feeds)."""
    from kd2deploy.export.onnx_export import sha256_file

    path, src_path = Path(path), Path(src_path)
    y = np.asarray(y)
    diff = np.abs(ref.astype(np.float64) - got)
    acc, acc_src = float(np.mean(got.argmax(-1) == y)), float(np.mean(ref.argmax(-1) == y))
    meta = read_variant_metadata(path) or {}
    spec = meta.get("spec", {})
    res: dict[str, Any] = {
        "name": spec.get("name", path.stem),
        "kind": spec.get("kind"),
        "path": path.name,
        "size_bytes": path.stat().st_size,
        "size_ratio": src_path.stat().st_size / path.stat().st_size,
        "sha256": sha256_file(path),
        "accuracy": acc,
        "accuracy_source": acc_src,
        "accuracy_drop_pp": (acc_src - acc) * 100,
        "parity": {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "argmax_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
            "n_samples": len(y),
        },
        "clipping": None,
    }
    grid = next(iter(quantized_output_range(path).values()), None)
    if grid is not None:
        calib = meta.get("calibration") or {}
        outside = (ref < grid[0]) | (ref > grid[1])
        ranges = calib.get("output_ranges") or {}
        res["clipping"] = {
            "source_max_abs_logit": float(np.abs(ref).max()),
            "variant_max_abs_logit": float(np.abs(got).max()),
            "calibration_range": next(iter(ranges.values()), None),
            "representable_range": grid,
            "n_outside": int(np.sum(outside)),
            "fraction_outside": float(np.mean(outside)),
            "n_logits": int(ref.size),
            "calibration": {k: calib[k] for k in ("method", "samples", "from") if k in calib},
        }
    return res


def describe_clipping(clipping: dict[str, Any] | None) -> str | None:
    """One line such as ``|logits| up to 20.4 on test, calibration range -15.2 to 18.6; 12 of 3600 test logits
    clipped``."""
    if not clipping:
        return None
    lo, hi = clipping["calibration_range"] or clipping["representable_range"]
    what = "calibration range" if clipping["calibration_range"] else "INT8 output range"
    return (
        f"|logits| up to {clipping['source_max_abs_logit']:.1f} on test, {what} {lo:.1f} to {hi:.1f}; "
        f"{clipping['n_outside']} of {clipping['n_logits']} test logits clipped"
    )
