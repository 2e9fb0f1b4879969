"""A real OpenSSH server on 127.0.0.1 for the target tests: keys, config and pid file in a temporary folder.

No system file is touched: the host key, the authorized key, the client key, a known_hosts file and sshd's
config live in the folder; ``UsePAM no`` and ``StrictModes no`` let it run from there. Needs Debian's
``openssh-server`` (``.ci/run`` installs it); the tests skip with the reason without it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_not() -> str | None:
    """The reason a real sshd cannot run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} not found (apt-get install openssh-server)"
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "the OpenSSH client (ssh, ssh-keygen) is not installed"
    return None


@dataclass
class Sshd:
    folder: Path
    port: int
    user: str
    key: Path
    other_key: Path
    known_hosts: Path
    host_pub: str
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def target(self, **extra) -> dict:
        """A ``targets:`` entry for this server (known host, its key)."""
        return {"name": "loop", "ssh": self.address, "identity_file": str(self.key),
                "known_hosts": str(self.known_hosts), **extra}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start(folder: Path) -> Sshd:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key", "other_key"):
        _keygen(folder / name)
    shutil.copyfile(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    user = getpass.getuser()
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(folder / "sshd.log", "wb"))  # noqa: SIM115
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    return Sshd(folder=folder, port=port, user=user, key=folder / "client_key", other_key=folder / "other_key",
                known_hosts=folder / "known_hosts", host_pub=" ".join(host_pub[:2]), proc=proc)
