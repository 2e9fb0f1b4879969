"""Datasets by name. Each returns a :class:`DataBundle` of seeded train / val / test splits as numpy arrays.

Built in: ``sklearn-digits`` (scikit-learn's bundled 8x8 digits, real data shipped inside the package) and
``npz`` (a user's own arrays). Only numpy and scikit-learn are imported here, so validating a pipeline is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kd2deploy.errors import ConfigError
from kd2deploy.registry import Registry


@dataclass
class DataBundle:
    """Train / val / test splits. ``x`` float32 with a leading sample axis, ``y`` int64 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    description: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "description": self.description,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_train": len(self.y_train),
            "n_val": len(self.y_val),
            "n_test": len(self.y_test),
            **self.meta,
        }


class DatasetLoader(Protocol):
    def __call__(self, cfg: Any, seed: int) -> DataBundle: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_data(cfg: Any, seed: int) -> DataBundle:
    """Loads the dataset named by ``cfg.source`` and checks the result."""
    bundle = DATASETS.get(cfg.source)(cfg, seed)
    check_bundle(bundle)
    return bundle


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, what: str, where: str):
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as e:
        raise ConfigError(f"{where}: cannot split off a {what} set: {e}") from None


@DATASETS.register("sklearn-digits")
def sklearn_digits(cfg: Any, seed: int) -> DataBundle:
    """scikit-learn's 1797 8x8 handwritten digits, pixels scaled to [0, 1], stratified seeded splits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = _split(x, y, cfg.test_fraction, seed, "test", "data.test_fraction")
    val = cfg.val_fraction / (1.0 - cfg.test_fraction)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, val, seed, "validation", "data.val_fraction")
    return DataBundle(
        x_train, y_train, x_val, y_val, x_test, y_test, num_classes=10, name="sklearn-digits",
        description="scikit-learn load_digits: 1797 handwritten digits, 8x8 grey levels, 10 classes",
    )


@DATASETS.register("npz")
def npz_file(cfg: Any, seed: int) -> DataBundle:
    """A user's arrays: x_train, y_train, x_test, y_test and optionally x_val, y_val in one .npz file."""
    path = Path(cfg.path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise ConfigError(f"{path}: data.path is not a readable .npz file ({type(e).__name__}: {e})") from None
    need = ["x_train", "y_train", "x_test", "y_test"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ConfigError(
            f"{path}: data.path lacks array(s) {', '.join(missing)}; found: {', '.join(sorted(arrays)) or 'none'}"
        )
    has_val = "x_val" in arrays or "y_val" in arrays
    if has_val and not ("x_val" in arrays and "y_val" in arrays):
        raise ConfigError(f"{path}: data.path has only one of x_val / y_val; give both or neither")
    for k, v in arrays.items():
        if k.startswith("x") and not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise ConfigError(f"{path}: {k} has dtype {v.dtype}; expected a float or integer array")
        if k.startswith("y") and not np.issubdtype(v.dtype, np.integer):
            raise ConfigError(f"{path}: {k} has dtype {v.dtype}; expected integer class indices")
        if k.startswith("y") and v.ndim != 1:
            raise ConfigError(f"{path}: {k} has shape {v.shape}; expected one class index per sample (1-D)")
        if k.startswith("x") and v.ndim < 2:
            raise ConfigError(f"{path}: {k} has shape {v.shape}; expected (samples, features...)")
    for part in ("train", "val", "test"):
        if f"x_{part}" in arrays and len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            raise ConfigError(
                f"{path}: x_{part} has {len(arrays[f'x_{part}'])} samples but y_{part} has "
                f"{len(arrays[f'y_{part}'])}; they must match"
            )
        if f"x_{part}" in arrays and len(arrays[f"x_{part}"]) == 0:
            raise ConfigError(f"{path}: x_{part} is empty")
    x_train = arrays["x_train"].astype(np.float32)
    y_train = arrays["y_train"].astype(np.int64)
    if has_val:
        x_val, y_val = arrays["x_val"].astype(np.float32), arrays["y_val"].astype(np.int64)
    else:
        x_train, x_val, y_train, y_val = _split(x_train, y_train, cfg.val_fraction, seed, "validation", str(path))
    ys = [y_train, y_val, arrays["y_test"]]
    num_classes = int(max(int(a.max()) for a in ys)) + 1
    return DataBundle(
        x_train, y_train, x_val, y_val, arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64),
        num_classes=num_classes, name="npz", description=f"arrays from {path.name}", meta={"path": str(path)},
    )


def check_bundle(b: DataBundle) -> None:
    """Rejects data the models cannot learn from, with a message that names the problem."""
    where = f"dataset {b.name!r}"
    shapes = {b.x_train.shape[1:], b.x_val.shape[1:], b.x_test.shape[1:]}
    if len(shapes) != 1:
        raise ConfigError(f"{where}: train / val / test samples have different shapes {sorted(shapes)}")
    for part in ("train", "val", "test"):
        x, y = getattr(b, f"x_{part}"), getattr(b, f"y_{part}")
        if len(y) == 0:
            raise ConfigError(f"{where}: the {part} split is empty")
        if y.min() < 0:
            raise ConfigError(f"{where}: y_{part} has negative labels; expected 0 .. num_classes - 1")
        if not np.isfinite(x).all():
            raise ConfigError(f"{where}: x_{part} holds NaN or infinite values")
    if len(np.unique(b.y_train)) < 2:
        raise ConfigError(f"{where}: the training split has fewer than 2 classes")
