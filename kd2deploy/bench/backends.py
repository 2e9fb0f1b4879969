"""One interface over the runtimes a model is benchmarked on.

A backend answers two questions: is it usable here (``available() -> (ok, reason)``) and how to turn a model
plus inputs into a runner for :func:`kd2deploy.bench.harness.measure`. Backends:

=====================  ===========================================================================
onnxruntime-cpu        onnxruntime, CPUExecutionProvider; host inputs, ``session.run``
onnxruntime-cuda       onnxruntime, CUDAExecutionProvider; inputs and outputs kept on the GPU (IOBinding)
onnxruntime-tensorrt   onnxruntime, TensorrtExecutionProvider (CUDA, CPU as fallback); IOBinding
tensorrt               a native TensorRT engine built from the ONNX file; GPU time from CUDA events
torch-eager-cpu        the torch module itself under ``torch.inference_mode()``
torch-eager-cuda       the same on the GPU, synchronised after every call
=====================  ===========================================================================

What is timed differs, and results say so (``timer``): the ORT and torch backends are timed on the host
around the whole call (GPU ones synchronise before returning, host<->device copies excluded); ``tensorrt``
reports GPU execution time between two CUDA events, without Python and launch overhead on the host.

Heavy imports (onnxruntime, torch, tensorrt) happen inside the functions that need them.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kd2deploy.bench.harness import HarnessSettings, Runner, create_ort_session, feeds_for, ort_runner
from kd2deploy.registry import Registry

Model = Any  # a path to a model file, or a torch.nn.Module for the torch backends
Inputs = Any  # np.ndarray, or a dict of named arrays for multi-input ONNX models


@dataclass
class LoadedModel:
    """A model made ready on a backend once; ``runner(x)`` makes a runner per input batch.

    Attributes:
        runner: builds a zero-argument runner for one batch of inputs (inputs copied/bound here, untimed).
        setup_s: seconds the loading took (session creation, engine build, moving weights).
        info: facts worth reporting (providers, precision, device).
    """

    runner: Callable[[Inputs], Runner]
    setup_s: float
    info: dict = field(default_factory=dict)


class Backend(Protocol):
    """What every backend provides."""

    name: str
    device: str  # "cpu" or "cuda"
    model_format: str  # "onnx" or "torch"
    precisions: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, the reason in words)."""
        ...

    def load(
        self,
        model: Model,
        settings: HarnessSettings,
        *,
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1,),
    ) -> LoadedModel:
        """Prepares ``model`` once for all ``batch_sizes``."""
        ...

    def make_runner(
        self, model: Model, x: Inputs, settings: HarnessSettings, *, precision: str = "fp32"
    ) -> tuple[Runner, float]:
        """Loads ``model`` and returns (runner for ``x``, setup seconds)."""
        ...


def _make_runner(backend: Backend, model: Model, x: Inputs, settings: HarnessSettings, precision: str):
    batch = len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)
    loaded = backend.load(model, settings, precision=precision, batch_sizes=(batch,))
    return loaded.runner(x), loaded.setup_s


def _check_precision(backend: Backend, precision: str) -> None:
    if precision not in backend.precisions:
        raise ValueError(
            f"backend {backend.name!r} runs precision {', '.join(backend.precisions)}, not {precision!r}"
            + (
                "; reduced precision on onnxruntime comes from the ONNX file itself (quantise or convert it)"
                if backend.model_format == "onnx" and backend.name != "tensorrt"
                else ""
            )
        )


def _onnx_path(backend: Backend, model: Model) -> Path:
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"backend {backend.name!r} takes a path to an ONNX file, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def nvidia_gpu_present() -> tuple[bool, str]:
    """Whether an NVIDIA GPU device node exists (no torch or CUDA import needed)."""
    nodes = ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu/igpu0", "/etc/nv_tegra_release")
    if any(os.path.exists(n) for n in nodes):
        return True, ""
    return False, f"no NVIDIA GPU: none of {', '.join(nodes)} exists"


# ---------------------------------------------------------------------------------------------------------
# onnxruntime


@dataclass
class OrtBackend:
    """onnxruntime with one execution provider (the others in ``providers`` are fallbacks)."""

    name: str
    providers: tuple[str, ...]
    device: str = "cpu"
    model_format: str = "onnx"
    precisions: tuple[str, ...] = ("fp32",)

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed"
        installed = ort.get_available_providers()
        if self.providers[0] not in installed:
            return (
                False,
                f"onnxruntime has no {self.providers[0]} (installed providers: {', '.join(installed)})",
            )
        if self.device == "cuda":
            return nvidia_gpu_present()
        return True, ""

    def load(
        self,
        model: Model,
        settings: HarnessSettings,
        *,
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1,),
    ) -> LoadedModel:
        _check_precision(self, precision)
        path = _onnx_path(self, model)
        providers: list = list(self.providers)
        if self.providers[0] == "TensorrtExecutionProvider":
            providers[0] = ("TensorrtExecutionProvider", {"trt_fp16_enable": precision == "fp16"})
        def make_session():
            return create_ort_session(path, replace(settings, provider=self.providers[0]), providers=providers)[0]

        session, seconds = create_ort_session(
            path, replace(settings, provider=self.providers[0]), providers=providers
        )
        if self.device == "cpu":
            runner = lambda x: ort_runner(session, x, make_session)  # noqa: E731
        else:
            runner = lambda x: ort_iobinding_runner(session, x)  # noqa: E731
        return LoadedModel(runner, seconds, {"providers": session.get_providers(), "precision": precision})

    def make_runner(
        self, model: Model, x: Inputs, settings: HarnessSettings, *, precision: str = "fp32"
    ) -> tuple[Runner, float]:
        return _make_runner(self, model, x, settings, precision)


def ort_iobinding_runner(session, x: Inputs, device: str = "cuda", device_id: int = 0) -> Runner:
    """A runner with inputs copied to the device once and outputs left there (copies are not timed).

    ``run_with_iobinding`` synchronises the provider's stream before returning, so the host timing covers
    the whole inference.
    """
    import onnxruntime as ort

    binding = session.io_binding()
    device_inputs = {
        name: ort.OrtValue.ortvalue_from_numpy(arr, device, device_id)
        for name, arr in feeds_for(session, x).items()
    }
    for name, value in device_inputs.items():
        binding.bind_ortvalue_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, device, device_id)
    run = session.run_with_iobinding

    def runner() -> None:
        run(binding)

    runner.device_inputs = device_inputs  # keeps the device buffers alive as long as the runner
    return runner


# ---------------------------------------------------------------------------------------------------------
# native TensorRT


class _CudaEventRunner:
    """Runs a TensorRT execution context; returns GPU nanoseconds between two CUDA events."""

    self_timed = True

    def __init__(self, context, stream, keep_alive: tuple) -> None:
        import torch

        self.context = context
        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.keep_alive = keep_alive  # engine, runtime and buffers must outlive the context's use

    def __call__(self) -> int:
        self.start.record(self.stream)
        ok = self.context.execute_async_v3(self.stream.cuda_stream)
        self.end.record(self.stream)
        self.end.synchronize()
        if not ok:
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return int(self.start.elapsed_time(self.end) * 1e6)  # elapsed_time is in milliseconds


@dataclass
class TensorRTBackend:
    """A native TensorRT engine built from an ONNX file (TensorRT 10 Python API), buffers from torch.

    One optimisation profile per batch size (min = opt = max) when the batch axis is dynamic. fp16 sets
    ``BuilderFlag.FP16`` where this TensorRT still has it; strongly typed TensorRT builds take the precision
    from the ONNX file instead.
    """

    name: str = "tensorrt"
    device: str = "cuda"
    model_format: str = "onnx"
    precisions: tuple[str, ...] = ("fp32", "fp16")
    workspace_bytes: int = 1 << 30

    def available(self) -> tuple[bool, str]:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False, "tensorrt package not installed"
        return _torch_cuda_available()

    def load(
        self,
        model: Model,
        settings: HarnessSettings,
        *,
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1,),
    ) -> LoadedModel:
        import tensorrt as trt

        _check_precision(self, precision)
        path = _onnx_path(self, model)
        t0 = time.perf_counter()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{path}: TensorRT could not parse the ONNX file: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if precision == "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise ValueError(
                    f"TensorRT {trt.__version__} builds strongly typed networks only; "
                    "export an fp16 ONNX file and run it with precision fp32"
                )
            config.set_flag(trt.BuilderFlag.FP16)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dynamic = any(-1 in tuple(t.shape) for t in inputs)
        profiles: dict[int, int] = {}
        if dynamic:
            for batch in sorted(set(batch_sizes)):
                profile = builder.create_optimization_profile()
                for t in inputs:
                    shape = list(t.shape)
                    if -1 in shape[1:]:
                        raise ValueError(
                            f"{path}: input {t.name!r} has dynamic axes besides the batch: {shape}"
                        )
                    shape[0] = batch
                    profile.set_shape(t.name, shape, shape, shape)
                profiles[batch] = config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{path}: TensorRT failed to build an engine (see its log above)")
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        seconds = time.perf_counter() - t0

        def runner(x: Inputs) -> Runner:
            return _trt_runner(engine, runtime, profiles, x)

        return LoadedModel(runner, seconds, {"tensorrt": trt.__version__, "precision": precision})

    def make_runner(
        self, model: Model, x: Inputs, settings: HarnessSettings, *, precision: str = "fp32"
    ) -> tuple[Runner, float]:
        return _make_runner(self, model, x, settings, precision)


def _trt_runner(engine, runtime, profiles: dict[int, int], x: Inputs) -> Runner:
    import tensorrt as trt
    import torch

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if isinstance(x, Mapping):
        feeds = dict(x)
    elif len(input_names) == 1:
        feeds = {input_names[0]: x}
    else:
        raise ValueError(f"the engine takes inputs {input_names}; pass a dict of arrays")
    batch = len(next(iter(feeds.values())))
    stream = torch.cuda.Stream()
    context = engine.create_execution_context()
    if profiles:
        if batch not in profiles:
            raise ValueError(f"no optimisation profile for batch {batch}; built for {sorted(profiles)}")
        context.set_optimization_profile_async(profiles[batch], stream.cuda_stream)
    buffers = {}
    for name in input_names:
        dtype = _torch_dtype(trt.nptype(engine.get_tensor_dtype(name)))
        arr = np.ascontiguousarray(feeds[name])
        context.set_input_shape(name, tuple(arr.shape))
        buffers[name] = torch.from_numpy(arr).to(device="cuda", dtype=dtype).contiguous()
    for name in names:
        if name not in buffers:
            dtype = _torch_dtype(trt.nptype(engine.get_tensor_dtype(name)))
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    torch.cuda.synchronize()
    return _CudaEventRunner(context, stream, keep_alive=(engine, runtime, buffers))


def _torch_dtype(np_dtype):
    import torch

    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype


# ---------------------------------------------------------------------------------------------------------
# torch eager


def _torch_cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (
            False,
            f"no NVIDIA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, {build})",
        )
    return True, ""


@dataclass
class TorchEagerBackend:
    """The torch module itself, in eval mode under ``torch.inference_mode()``.

    ``torch.set_num_threads(settings.intra_op_threads)`` is process-wide: it stays set after the benchmark.
    The module is deep-copied before it is moved or cast, so the caller's module is left as it was.
    """

    name: str
    device: str = "cpu"
    model_format: str = "torch"
    precisions: tuple[str, ...] = ("fp32",)

    def available(self) -> tuple[bool, str]:
        if self.device == "cuda":
            return _torch_cuda_available()
        try:
            import torch  # noqa: F401
        except ImportError:
            return False, "torch is not installed"
        return True, ""

    def load(
        self,
        model: Model,
        settings: HarnessSettings,
        *,
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1,),
    ) -> LoadedModel:
        import torch

        _check_precision(self, precision)
        t0 = time.perf_counter()
        module = _torch_module(self, model)
        if settings.intra_op_threads > 0:
            torch.set_num_threads(settings.intra_op_threads)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        module = module.to(device=self.device, dtype=dtype).eval()
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        device = self.device

        def runner(x: Inputs) -> Runner:
            def tensor(a):
                t = torch.from_numpy(np.ascontiguousarray(a)).to(device=device)
                return t.to(dtype) if t.is_floating_point() else t

            # One array is the only input; a dict (e.g. input_ids, attention_mask) goes in by keyword.
            args, kwargs = ((), {k: tensor(v) for k, v in x.items()}) if isinstance(x, Mapping) else ((tensor(x),), {})
            if device == "cuda":
                torch.cuda.synchronize()

                def run_cuda() -> object:
                    with torch.inference_mode():
                        out = module(*args, **kwargs)
                    torch.cuda.synchronize()
                    return out

                return run_cuda

            def run_cpu() -> object:
                with torch.inference_mode():
                    return module(*args, **kwargs)

            return run_cpu

        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "precision": precision}
        return LoadedModel(runner, seconds, info)

    def make_runner(
        self, model: Model, x: Inputs, settings: HarnessSettings, *, precision: str = "fp32"
    ) -> tuple[Runner, float]:
        return _make_runner(self, model, x, settings, precision)


def _torch_module(backend: TorchEagerBackend, model: Model):
    import torch

    if isinstance(model, torch.nn.Module):
        return copy.deepcopy(model)
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".pt2"):
        return torch.export.load(os.fspath(model)).module()
    raise TypeError(
        f"backend {backend.name!r} takes a torch.nn.Module or a .pt2 file saved with torch.export.save, "
        f"got {model!r}"
    )


# ---------------------------------------------------------------------------------------------------------
# registry

BACKENDS: Registry[Backend] = Registry("backend")
BACKENDS.register("onnxruntime-cpu")(OrtBackend("onnxruntime-cpu", ("CPUExecutionProvider",)))
BACKENDS.register("onnxruntime-cuda")(
    OrtBackend("onnxruntime-cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), device="cuda")
)
BACKENDS.register("onnxruntime-tensorrt")(
    OrtBackend(
        "onnxruntime-tensorrt",
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        device="cuda",
        precisions=("fp32", "fp16"),
    )
)
BACKENDS.register("tensorrt")(TensorRTBackend())
BACKENDS.register("torch-eager-cpu")(TorchEagerBackend("torch-eager-cpu", device="cpu"))
BACKENDS.register("torch-eager-cuda")(
    TorchEagerBackend("torch-eager-cuda", device="cuda", precisions=("fp32", "fp16"))
)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    BACKENDS.check(name)
    return BACKENDS.get(name)


def backend_names() -> list[str]:
    """Registered backend names, sorted."""
    return BACKENDS.names()
