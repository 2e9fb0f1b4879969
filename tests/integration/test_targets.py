"""Targets over a real sshd on 127.0.0.1 (tests/sshd.py): benchmark, check, and every failure as one line."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kd2deploy.bench.harness import HarnessSettings
from kd2deploy.targets.config import TargetConfig
from kd2deploy.targets.runner import bench_on_target, check_target
from kd2deploy.targets.ssh import TargetError
from tests.unit.test_bench_harness import make_mlp_onnx

PY = sys.executable  # the test's own Python has numpy and onnxruntime: the loopback target's Python
FAST = HarnessSettings(warmup_s=0.0, warmup_runs=2, min_duration_s=0.05, min_runs=10, rounds=2, bootstrap=200)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"teacher": make_mlp_onnx(d / "teacher.onnx", hidden=256), "student": make_mlp_onnx(d / "student.onnx",
                                                                                                 hidden=8)}


def target(sshd, **extra) -> TargetConfig:
    return TargetConfig(**sshd.target(python=PY, **extra))


def leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("kd2deploy-*")}


def test_bench_on_loopback_target(sshd, onnx_pair):
    before = leftovers()
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    entry = bench_on_target(target(sshd, energy={"cpu_power_w": 5.0}), onnx_pair, batch_sizes=[1, 4],
                            settings=FAST, inputs=x, pairs=[("teacher", "student")],
                            energy={"window_s": 0.3, "repeats": 1, "batch_size": 1, "idle": True})
    assert entry["status"] == "ok"
    assert {(r["model"], r["batch_size"]) for r in entry["results"]} == {
        (m, b) for m in ("teacher", "student") for b in (1, 4)}
    assert all(m["sha256_match"] for m in entry["models"])
    ratio = entry["ratios"][0]["per_batch"][0]
    assert ratio["ci95"][0] <= ratio["ratio_p50"] <= ratio["ci95"][1]
    assert entry["settings"]["inputs"] == "real test inputs"
    assert entry["memory"]["student"]["peak_rss_bytes"] > 0
    # no sensor on this VM: energy comes from the profile and says so
    e = entry["energy"]
    assert e["label"] == "modelled" and "5 W" in e["label_text"]
    assert e["models"]["teacher"]["j_per_inference_gross"]["mean"] > 0
    assert "teacher/student" in e["ratios"]
    assert entry["facts"]["onnxruntime"]
    assert leftovers() == before  # the temporary folder on the target is gone


def test_check_prints_facts(sshd):
    facts = check_target(target(sshd))
    assert facts["numpy"] and facts["onnxruntime"] and facts["logical_cpus"] >= 1
    assert "CPUExecutionProvider" in facts["onnxruntime_providers"]


@pytest.mark.parametrize("case", ["wrong-port", "wrong-key", "unknown-host-key", "changed-host-key"])
def test_connection_failures_are_one_line(sshd, tmp_path, case):
    from tests.sshd import free_port

    if case == "wrong-port":
        t = TargetConfig(**{**sshd.target(python=PY), "ssh": f"{sshd.user}@127.0.0.1:{free_port()}"})
        expect = "connection refused"
    elif case == "wrong-key":
        t = target(sshd, identity_file=str(sshd.other_key))
        expect = "refused the key"
    elif case == "unknown-host-key":
        t = target(sshd, known_hosts=str(tmp_path / "empty_known_hosts"))
        expect = "unknown host key"
    else:
        kh = tmp_path / "kh"
        other = (sshd.folder / "other_key.pub").read_text().split()
        kh.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
        t = target(sshd, known_hosts=str(kh), accept_new_host_key=True)
        expect = "CHANGED"
    with pytest.raises(TargetError) as e:
        check_target(t)
    msg = str(e.value)
    assert msg.startswith("target loop: ") and expect in msg and "\n" not in msg, msg


def test_accept_new_host_key_only_when_the_target_says_so(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    check_target(target(sshd, known_hosts=str(kh), accept_new_host_key=True))
    assert sshd.host_pub.split()[1] in kh.read_text()  # (Debian's ssh_config hashes the host name)
    check_target(target(sshd, known_hosts=str(kh)))  # now known: strict checking passes


def test_remote_python_without_onnxruntime(sshd, onnx_pair):
    bare = "/usr/bin/python3"
    if not os.path.exists(bare):
        pytest.skip("no /usr/bin/python3 to stand for a Python without numpy/onnxruntime")
    t = TargetConfig(**sshd.target(python=bare))
    with pytest.raises(TargetError) as e:
        bench_on_target(t, onnx_pair, batch_sizes=[1], settings=FAST)
    msg = str(e.value)
    assert "cannot import" in msg and "pip install numpy onnxruntime" in msg and msg.startswith("target loop:")


def test_missing_remote_python(sshd, onnx_pair):
    with pytest.raises(TargetError, match="was not found on the target"):
        check_target(TargetConfig(**sshd.target(python="/nonexistent/python3")))


def test_remote_timeout_stops_and_cleans_up(sshd, onnx_pair):
    before = leftovers()
    slow = HarnessSettings(warmup_s=0.0, min_duration_s=30.0, rounds=1, bootstrap=100)
    t0 = time.perf_counter()
    with pytest.raises(TargetError, match=r"exceeded its timeout of 3 s"):
        bench_on_target(target(sshd, timeout_s=3), onnx_pair, batch_sizes=[1], settings=slow,
                        memory_batch_size=None, flops_probe=False)
    assert time.perf_counter() - t0 < 25
    assert leftovers() == before


def _agent_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            agent = [c for c in cmd if c.endswith(b"/agent.py") and b"/kd2deploy-" in c]
            if agent and (Path(os.fsdecode(agent[0])).parent / "models").is_dir():  # the benchmark, not the probe
                pids.append(int(p.name))
    return pids


def test_killed_remote_process_is_named(sshd, onnx_pair):
    """The agent the test's own job started on the (loopback) target is killed by its pid."""
    import signal

    before = leftovers()
    slow = HarnessSettings(warmup_s=0.0, min_duration_s=30.0, rounds=1, bootstrap=100)
    errors: list[Exception] = []

    def go():
        try:
            bench_on_target(target(sshd), onnx_pair, batch_sizes=[1], settings=slow, memory_batch_size=None)
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)

    th = threading.Thread(target=go)
    th.start()
    deadline = time.time() + 30
    pids: list[int] = []
    while time.time() < deadline and not pids:
        time.sleep(0.2)
        pids = _agent_pids()
    assert pids, "the remote agent never started"
    time.sleep(0.5)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    th.join(60)
    assert errors and isinstance(errors[0], TargetError)
    assert "killed (SIGKILL" in str(errors[0])
    assert leftovers() == before


@pytest.mark.parametrize("bad", ["x;touch /tmp/pwned", "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
                                 "a|touch /tmp/pwned", "-oProxyCommand=touch /tmp/pwned"])
@pytest.mark.parametrize("field", ["host", "user", "python", "workdir"])
def test_shell_metacharacters_are_refused(sshd, field, bad):
    from pydantic import ValidationError

    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    entry = sshd.target(python=PY)
    if field == "host":
        entry["ssh"] = f"{sshd.user}@{bad}"
    elif field == "user":
        entry["ssh"] = f"{bad}@127.0.0.1:{sshd.port}"
    elif field == "python":
        entry["python"] = bad
    else:
        entry["workdir"] = "/tmp/" + bad
    with pytest.raises(ValidationError) as e:
        TargetConfig(**entry)
    assert "not allowed" in str(e.value) or "is not a" in str(e.value)
    assert not pwned.exists()


def test_transport_checks_again_without_the_schema(sshd):
    """A config built without validation (model_construct) is still refused by the transport."""
    from kd2deploy.targets.ssh import ssh_argv

    t = TargetConfig.model_construct(**{**TargetConfig(**sshd.target()).__dict__, "ssh": "root@x;touch /tmp/pwned"})
    with pytest.raises(ValueError, match="is not a host name"):
        ssh_argv(t, "true")
    assert not Path("/tmp/pwned").exists()


def test_disk_full_on_the_target_is_one_line(tmp_path, onnx_pair):
    """The bootstrap unpacking onto a full 64 KiB tmpfs (a private mount namespace: nothing else sees it)."""
    import json
    import shlex
    import shutil
    import subprocess

    from kd2deploy.targets.runner import _remote_error, make_bundle
    from kd2deploy.targets.ssh import MARK, REMOTE

    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    mnt = tmp_path / "small"
    mnt.mkdir()
    bundle = make_bundle({"action": "probe"}, {"models/m0.onnx": onnx_pair["teacher"]})
    src = (REMOTE / "bootstrap.py").read_text()
    script = (f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(mnt))} && "
              + shlex.join([PY, "-c", src, str(mnt), "30"]))
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], input=bundle, capture_output=True, timeout=60)
    if b"mount" in done.stderr and done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[-200:]}")
    docs = [json.loads(ln[len(MARK):]) for ln in done.stdout.decode().splitlines() if ln.startswith(MARK)]
    assert docs and docs[-1]["error"] == "disk_full", done
    msg = str(_remote_error(TargetConfig(name="board-1", ssh="pi@board-1"), docs[-1]))
    assert msg.startswith("target board-1: the target's disk is full (No space left on device") and "\n" not in msg
    assert "set workdir:" in msg


def test_too_old_remote_python_is_named(sshd):
    old = next((str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.8*/bin/python3.8"))), None) \
        if Path("/root/.pyenv/versions").is_dir() else None
    if old is None:
        pytest.skip("no Python 3.8 here to stand for a target's old Python")
    with pytest.raises(TargetError, match=r"is Python 3\.8\.\d+; the harness needs Python 3\.9 or newer"):
        check_target(TargetConfig(**sshd.target(python=old)))


def test_dropped_connection_stops_the_remote_agent_and_cleans_up(sshd, onnx_pair):
    """The local ssh dies mid-run (Ctrl-C, a laptop lid): the target stops the agent and removes its folder."""
    import subprocess

    from kd2deploy.targets.runner import make_bundle
    from kd2deploy.targets.ssh import bootstrap_command, ssh_argv

    before = leftovers()
    t = target(sshd)
    job = {"action": "bench", "sensor": "none", "settings": {**FAST.__dict__, "min_duration_s": 60.0, "rounds": 1},
           "providers": ["CPUExecutionProvider"], "models": [{"name": "teacher", "file": "models/m0.onnx"}],
           "inputs": None, "batch_sizes": [1], "pairs": [], "energy": None, "memory_batch_size": None,
           "flops_probe": False}
    bundle = make_bundle(job, {"models/m0.onnx": onnx_pair["teacher"]})
    proc = subprocess.Popen(ssh_argv(t, bootstrap_command(t, 300)), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.stdin.write(bundle)
    proc.stdin.close()
    deadline = time.time() + 30
    while time.time() < deadline and not _agent_pids():
        time.sleep(0.2)
    pids = _agent_pids()
    assert pids, "the remote agent never started"
    proc.kill()  # the local ssh client only (our own child)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and (any(Path(f"/proc/{p}").exists() for p in pids) or leftovers() != before):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "the remote agent still runs"
    assert leftovers() == before
