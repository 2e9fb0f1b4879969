"""Property test of the pipeline loader: any YAML document ends in a valid config or one clean error line.

Random documents (nested mappings, lists and scalars), near-valid pipelines with mutated keys and values,
raw text with YAML punctuation, and ``--set`` overrides go through :func:`load_config`. The only outcomes
allowed are a :class:`PipelineConfig` (whose hash can be computed) or a :class:`ConfigError` whose message is
one line and names the file (or the ``--set`` item it came from). Anything else (a KeyError, a RecursionError,
a pydantic error that escaped, a message of two lines) is a bug.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kd2deploy.config import PipelineConfig, load_config
from kd2deploy.errors import ConfigError

BASE = PipelineConfig().resolved()


def _paths(node, prefix=()):
    """Every key path of a nested dict/list document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(BASE)
KEYS = sorted({p[-1] for p in PATHS if isinstance(p[-1], str)})
DOTTED = [".".join(str(k) for k in p) for p in PATHS]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "npz",
            "hinton",
            "cnn-tiny",
            "onnxruntime-cpu",
            "x.py:build",
            "../nowhere.pt",
            "1e400",
            "-1",
            "0",
            "",
            "~",
            "[1",
            "a\nb",
            "\x00",
            "é" * 3,
            "a" * 300,
        ]
    ),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.integers(-2, 3), st.booleans())
documents = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=5)),
    max_leaves=25,
)


def _typo(key: str, data: st.DataObject) -> str:
    if not key:
        return "x"
    i = data.draw(st.integers(0, len(key) - 1))
    return data.draw(st.sampled_from([key[:i] + key[i + 1 :], key[:i] + "x" + key[i:], key.upper(), key + "s"]))


def _mutate(doc: dict, data: st.DataObject) -> dict:
    """One to three edits of a valid pipeline: replace, delete, rename (typo) or add a key, or set None."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc) or [("name",)]))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
        except (KeyError, IndexError, TypeError):
            continue
        last = path[-1]
        op = data.draw(st.sampled_from(["replace", "delete", "typo", "add", "none"]))
        if isinstance(parent, list):
            if not (isinstance(last, int) and last < len(parent)):
                continue
            if op == "delete":
                del parent[last]
            else:
                parent[last] = None if op == "none" else data.draw(documents)
        elif isinstance(parent, dict) and last in parent:
            if op == "replace":
                parent[last] = data.draw(documents)
            elif op == "delete":
                del parent[last]
            elif op == "typo":
                parent[_typo(str(last), data)] = parent.pop(last)
            elif op == "add":
                parent[data.draw(keys)] = data.draw(documents)
            else:
                parent[last] = None
    return doc


def _check(path, overrides=None) -> None:
    """The property: a valid config, or one clean line that names the file (or the --set item)."""
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert str(path) in msg or msg.startswith("--set "), msg
        assert "Traceback" not in msg and "pydantic" not in msg.lower(), msg
    else:
        assert isinstance(cfg, PipelineConfig)
        assert len(cfg.config_hash()) == 64


def _write(tmp_path, text: str):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    return p


# 60 examples per test keeps the file to a few seconds; KD2DEPLOY_FUZZ_EXAMPLES=3000 searches harder.
FUZZ = settings(
    max_examples=int(os.environ.get("KD2DEPLOY_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(doc=documents)
def test_random_documents(tmp_path, doc):
    _check(_write(tmp_path, yaml.safe_dump(doc, allow_unicode=True)))


@FUZZ
@given(data=st.data())
def test_near_valid_pipelines(tmp_path, data):
    doc = _mutate(BASE, data)
    _check(_write(tmp_path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)))


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{},#&*!|>'\"%@`? \n\t0.9")), max_size=60))
@example(text="a: &x [*x]\n")  # a recursive alias
@example(text="a: &x {b: *x}\n")
@example(text="distill: &d {train: *d}\n")
@example(text="seed: " + "9" * 5000 + "\n")  # beyond Python's int-from-string limit
@example(text="seed: 2024-13-45\n")  # a timestamp that is no date
@example(text="seed: !!float abc\n")
@example(text="a: " + "[" * 3000 + "]" * 3000 + "\n")  # deeper than Python's recursion limit
@example(text="seed: \x1b\n")  # a character YAML forbids
@example(text="? [a, b]\n: 1\n")  # an unhashable key
@example(text="distill:\n  <<: {alpha: 0.3}\n")  # a merge key
@example(text="%YAML 1.1\n---\nseed: 1\n---\nseed: 2\n")  # two documents
@example(text="\ufeffseed: 1\n")
def test_raw_text(tmp_path, text):
    _check(_write(tmp_path, text))


@FUZZ
@given(
    key=st.one_of(st.sampled_from(DOTTED), st.text(max_size=15)),
    value=st.one_of(
        st.sampled_from(["1", "-1", "[1, 2]", "{a: 1}", "x", "", "[", "null", "1e400"]), st.text(max_size=10)
    ),
    sep=st.sampled_from(["=", "=", ":", ""]),
)
@example(key="distill.seeds.5.x", value="1", sep="=")  # an index past the end of a list
@example(key="distill.seeds.0.x", value="1", sep="=")
@example(key="benchmark.batch_sizes.9", value="4", sep="=")
@example(key="teacher.checkpoint", value="a" * 5000, sep="=")
def test_overrides(tmp_path, key, value, sep):
    _check(_write(tmp_path, "seed: 1\ndistill:\n  seeds: [0, 1]\n"), [f"{key}{sep}{value}"])


@pytest.mark.parametrize("value", ["a" * 5000, "a\x00b", "a\nb.npz", "/proc/self/fd/99999/x"])
def test_unusable_paths_are_config_errors(tmp_path, value):
    _check(_write(tmp_path, yaml.safe_dump({"data": {"source": "npz", "path": value}})))
    _check(_write(tmp_path, yaml.safe_dump({"teacher": {"checkpoint": value}})))
    _check(_write(tmp_path, yaml.safe_dump({"student": {"arch": value + ".py:build"}})))


def test_non_finite_numbers_are_rejected_where_they_stand(tmp_path):
    for key in ("temperature", "alpha"):
        for v in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=f"distill.{key}"):
                load_config(_write(tmp_path, yaml.safe_dump({"distill": {key: v}})))
