"""``kd2deploy run --nproc N``: starts the same command under PyTorch's own launcher, torchrun.

It runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m kd2deploy run PIPELINE ...`` (the
same arguments minus ``--nproc``), so a run started this way is exactly ``torchrun --nproc-per-node N -m
kd2deploy run PIPELINE ...``. What it adds: torchrun's own log lines and its multi-page failure traceback are
filtered out, and when a training process dies the run ends with ONE line saying which rank stopped, that the
last good checkpoint is kept and that the same command resumes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

LAUNCHED_ENV = "KD2DEPLOY_LAUNCHED"  # set for the ranks: they leave the failure message to this launcher
_AGENT_LOG = re.compile(r"^\[?[WIEDF]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ ")


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun command line for ``kd2deploy run`` with ``args`` (``--nproc`` already removed)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--monitor-interval=0.5", "-m", "kd2deploy", *args]


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def failed_rank(text: str) -> tuple[int | None, int | None]:
    """(rank, exit code) of torchrun's "Root Cause (first observed failure)" report, or (None, None)."""
    part = text.split("Root Cause", 1)[-1]
    rank = re.search(r"rank\s*:\s*(\d+)", part)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", part)
    return (int(rank.group(1)) if rank else None, int(code.group(1)) if code else None)


def _describe(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def launch(nproc: int, args: list[str], out_dir: str = "runs") -> int:
    """Runs torchrun; returns its exit code (0, or 1 after one line on stderr when a rank failed)."""
    env = {**os.environ, LAUNCHED_ENV: "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too (it prints a banner when it sets it)
    proc = subprocess.Popen(torchrun_command(nproc, args), stdout=sys.stdout, stderr=subprocess.PIPE, text=True,
                            env=env, bufsize=1)
    held: list[str] = []  # a traceback block: torchrun's own (dropped) or a rank's (passed on)
    failure: str | None = None
    try:
        for line in proc.stderr:
            if held or line.startswith("Traceback (most recent call last)"):
                held.append(line)
                if "ChildFailedError" in line or line.startswith("=" * 20):
                    failure = "".join(held)
                continue
            if _AGENT_LOG.match(line) or "torch.distributed.elastic" in line or "torch/distributed/" in line:
                continue
            sys.stderr.write(line)
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    if held and failure is None:
        sys.stderr.write("".join(held))
    if rc == 0:
        return 0
    text = failure or "".join(held)
    rank, code = failed_rank(text)
    if (rank is None and not text) or code == 2:  # bad input: the rank already said what is wrong
        return 2 if code == 2 else rc
    who = f"training rank {rank} of {nproc} stopped ({_describe(code)})" if rank is not None else \
        f"a training process stopped (torchrun exit code {rc})"
    sys.stderr.write(f"error: {who}; the whole run stopped. The last good checkpoint is kept in "
                     f"{os.path.join(out_dir, '.cache')}/ (per-epoch resume); run the same command again to "
                     "resume from it.\n")
    return 1
