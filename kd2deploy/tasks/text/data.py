"""Labelled text from CSV, JSONL or a class-folder; labels mapped deterministically; seeded stratified splits."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd2deploy.errors import ConfigError


@dataclass
class TextData:
    """Texts and integer labels per split, and the label names (sorted; index = class id)."""

    labels: list[str]
    train: tuple[list[str], np.ndarray]
    val: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]
    source: str

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise ConfigError(f"{path}: text.data.format 'auto' cannot tell the format from suffix {suffix!r}; "
                      "allowed: .csv, .jsonl (or set text.data.format: csv / jsonl / folder)")


def read_records(path: Path, fmt: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Reads (texts, label strings); every problem names the file, the row or line, and the field."""
    fmt = detect_format(path, fmt)
    texts: list[str] = []
    labels: list[str] = []
    if fmt == "folder":
        if not path.is_dir():
            raise ConfigError(f"{path}: text.data.format 'folder' needs a folder with one subfolder per label")
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
            for f in sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith(".")):
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
                labels.append(sub.name)
    elif fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            for col, key in ((text_column, "text_column"), (label_column, "label_column")):
                if col not in cols:
                    raise ConfigError(f"{path}: text.data.{key} {col!r} is not a column; allowed: {', '.join(cols)}")
            for i, row in enumerate(reader, start=2):
                t, lab = row.get(text_column), row.get(label_column)
                if t is None or lab is None or lab.strip() == "":
                    raise ConfigError(f"{path}:{i}: row has no {text_column!r} or {label_column!r} value")
                texts.append(t)
                labels.append(lab.strip())
    elif fmt == "jsonl":
        from kd2deploy.tasks.hf_common import jsonl_records

        for i, rec in jsonl_records(path):
            for col, key in ((text_column, "text_column"), (label_column, "label_column")):
                if col not in rec:
                    raise ConfigError(f"{path}:{i}: text.data.{key} {col!r} missing; the line has "
                                      f"{', '.join(rec) or 'no keys'}")
            if not isinstance(rec[text_column], str):
                raise ConfigError(f"{path}:{i}: {text_column!r} must be a string")
            texts.append(rec[text_column])
            labels.append(str(rec[label_column]))
    else:  # pragma: no cover - the schema allows no other value
        raise ConfigError(f"{path}: unknown format {fmt!r}; allowed: csv, jsonl, folder")
    if not texts:
        raise ConfigError(f"{path}: no labelled texts found")
    return texts, labels


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Indices (train, val, test), stratified by class and seeded."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest],
                                      random_state=seed)
    except ValueError as e:
        raise ConfigError(f"text.data: cannot split {len(y)} examples into stratified train/val/test "
                          f"({e}); every label needs a few examples in each split") from None
    return np.sort(train), np.sort(val), np.sort(test)


def load_text_data(cfg, base_dir: str | Path, seed: int) -> TextData:
    """Loads ``cfg`` (a :class:`~kd2deploy.tasks.text.config.TextDataConfig`) and splits it."""
    from kd2deploy.tasks.hf_common import resolve_location

    path = resolve_location(cfg.path, base_dir)
    texts, names = read_records(path, cfg.format, cfg.text_column, cfg.label_column)
    labels = sorted(set(names))
    if len(labels) < 2:
        raise ConfigError(f"{path}: text.data.label_column {cfg.label_column!r} has one label ({labels[0]!r}); "
                          "classification needs at least two")
    ids = {name: i for i, name in enumerate(labels)}
    y = np.array([ids[n] for n in names], dtype=np.int64)
    tr, va, te = stratified_split(y, cfg.val_fraction, cfg.test_fraction, seed)

    def pick(ix):
        return [texts[i] for i in ix], y[ix]

    return TextData(labels=labels, train=pick(tr), val=pick(va), test=pick(te), source=str(path))
