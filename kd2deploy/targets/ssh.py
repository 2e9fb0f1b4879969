"""The transport: the system OpenSSH client, called with an argument list, one connection per job.

Users' ``~/.ssh/config``, agents and ``ProxyJump`` work because this is their own ``ssh``. Every call has
``BatchMode=yes`` (never a password prompt), a connect timeout, keep-alives and strict host-key checking
(``accept-new`` only when the target says ``accept_new_host_key: true``). The remote command is built only from
fixed text and allow-listed values (:mod:`kd2deploy.targets.address`), each quoted with :func:`shlex.quote`;
files travel as a .tar.gz on stdin to ``remote/bootstrap.py``, which unpacks them into a fresh temporary folder on
the target and removes it afterwards. Every failure becomes a :class:`TargetError`: one line naming the target.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd2deploy.errors import StageError
from kd2deploy.targets.address import check_remote_path, parse_address
from kd2deploy.targets.config import TargetConfig

REMOTE = Path(__file__).with_name("remote")
MARK = "KD2DEPLOY-RESULT "


class TargetError(StageError):
    """A target could not be reached or its benchmark failed; the message names the target and the cause."""

    def __init__(self, target: str, message: str, kind: str = "failed") -> None:
        super().__init__(f"target {target}: {message}")
        self.target, self.reason, self.kind = target, message, kind


def _option_path(path: Path) -> str:
    text = os.fspath(path)
    if '"' in text or "\n" in text:
        raise TargetError("?", f"{text!r}: a path for ssh may not hold quotes or new lines", "config")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def ssh_argv(t: TargetConfig, remote_command: str) -> list[str]:
    """``ssh`` and its options for target ``t``, then ``--``, the destination and the remote command."""
    addr = parse_address(t.ssh)  # checked again here: the API may be called without the schema
    check_remote_path("python", t.python)
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(t.connect_timeout_s)}",
            "-o", f"StrictHostKeyChecking={'accept-new' if t.accept_new_host_key else 'yes'}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
    if t.ssh_config is not None:
        argv += ["-F", os.fspath(t.ssh_config)]
    if t.identity_file is not None:
        argv += ["-i", os.fspath(t.identity_file), "-o", "IdentitiesOnly=yes"]
    if t.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={_option_path(t.known_hosts)}"]
    if addr.port is not None:
        argv += ["-p", str(addr.port)]
    return [*argv, "--", addr.destination, remote_command]


def bootstrap_command(t: TargetConfig, timeout_s: float) -> str:
    """The remote command line: the target's Python running ``bootstrap.py`` (its source as ``-c``)."""
    if t.workdir is not None:
        check_remote_path("workdir", t.workdir, absolute=True)
    source = (REMOTE / "bootstrap.py").read_text(encoding="utf-8")
    return shlex.join([t.python, "-c", source, t.workdir or "", f"{float(timeout_s):g}"])


_SSH_FAILURES = [
    (r"Connection refused", "unreachable",
     "cannot connect to {where}: connection refused (no SSH server listening on that port)"),
    (r"Connection timed out|Operation timed out|timed out during banner",
     "unreachable", "cannot connect to {where}: timed out after {connect}s (connect_timeout_s)"),
    (r"Could not resolve hostname|Name or service not known", "unreachable",
     "cannot resolve host name {host!r}"),
    (r"No route to host|Network is unreachable", "unreachable", "cannot reach {where}: no route to the host"),
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", "host_key",
     "the host key of {where} has CHANGED since it was recorded; not connecting (check the device, then remove "
     "the old key with ssh-keygen -R)"),
    (r"Host key verification failed|No \S+ host key is known", "host_key",
     "unknown host key for {where} and strict host-key checking is on; check its fingerprint and add it to "
     "{known} (ssh-keyscan), or set accept_new_host_key: true on this target"),
    (r"Permission denied", "auth",
     "{user}@{host} refused the key (Permission denied, publickey); check identity_file and the target's "
     "~/.ssh/authorized_keys"),
    (r"Too many authentication failures", "auth", "{user}@{host}: too many authentication failures; set "
     "identity_file"),
]


@dataclass
class Reply:
    """What one remote job returned: the bootstrap's result document and the agent's stderr (progress)."""

    doc: dict[str, Any]
    stderr: str
    started: dict[str, Any] | None


def _classify_ssh(t: TargetConfig, rc: int, stderr: str) -> TargetError:
    addr = t.address
    fields = {"where": f"{addr.host}:{addr.port or 22}", "host": addr.host, "user": addr.user or "(default user)",
              "connect": t.connect_timeout_s,
              "known": os.fspath(t.known_hosts) if t.known_hosts else "~/.ssh/known_hosts"}
    for pattern, kind, text in _SSH_FAILURES:
        if re.search(pattern, stderr):
            return TargetError(t.name, text.format(**fields), kind)
    last = (stderr.strip().splitlines() or ["no message"])[-1][:300]
    if rc == 127 or re.search(r"command not found|No such file or directory", stderr):
        return TargetError(t.name, f"{t.python!r} was not found on the target ({last}); set python: to the "
                           "target's Python 3 that has numpy and onnxruntime", "python")
    if rc == 255:
        return TargetError(t.name, f"ssh failed: {last}", "unreachable")
    return TargetError(t.name, f"the remote command failed (exit {rc}): {last}", "remote")


def _communicate(argv: list[str], data: bytes, limit: float,
                 on_line: Callable[[str], object] | None) -> tuple[int, str, str] | None:
    """Runs ``argv`` with ``data`` on stdin; stderr lines go to ``on_line`` as they come. None on timeout."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[bytes] = []
    err: list[str] = []

    def feed() -> None:
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except OSError:  # ssh stopped reading (it failed to connect): its exit status says why
            pass

    def read_out() -> None:
        out.append(proc.stdout.read())

    def read_err() -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            err.append(line)
            if on_line is not None and line.startswith("[target] "):
                on_line(line[len("[target] "):].rstrip())

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_out, read_err)]
    for th in threads:
        th.start()
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        for th in threads:
            th.join(5)
    return rc, b"".join(out).decode("utf-8", "replace"), "".join(err)


def run_job(t: TargetConfig, bundle: bytes, timeout_s: float,
            on_line: Callable[[str], object] | None = None) -> Reply:
    """Sends ``bundle`` (a .tar.gz holding agent.py and job.json) and returns the agent's result document.

    The remote side stops the agent after ``timeout_s``; ssh itself is stopped ``connect_timeout_s + 30`` s
    later if the target never answers. The agent's progress lines go to ``on_line`` as they arrive.

    Raises:
        TargetError: ssh could not connect or authenticate, the remote command failed, or nothing came back.
    """
    argv = ssh_argv(t, bootstrap_command(t, timeout_s))
    limit = timeout_s + t.connect_timeout_s + 30
    try:
        done = _communicate(argv, bundle, limit, on_line)
    except FileNotFoundError:
        raise TargetError(t.name, "the ssh client is not installed here (apt-get install openssh-client)",
                          "local") from None
    if done is None:
        raise TargetError(t.name, f"no answer within {limit:.0f} s; ssh was stopped (the target may be hung "
                          "or the network down)", "timeout")
    rc, stdout, stderr = done
    docs = []
    for line in stdout.splitlines():
        if line.startswith(MARK):
            try:
                docs.append(json.loads(line[len(MARK):]))
            except json.JSONDecodeError:
                continue
    started = next((d for d in docs if "started" in d), None)
    final = [d for d in docs if "started" not in d]
    if not final:
        if rc == 0:
            raise TargetError(t.name, "the target answered without a result (the remote output was cut)", "remote")
        raise _classify_ssh(t, rc, stderr)
    return Reply(doc=final[-1], stderr=stderr, started=started)
