"""Target addresses and remote paths, validated before anything reaches ``ssh``.

Nothing a pipeline file says is ever pasted into a shell string unchecked: a user, host, port, remote Python or
work folder must match a short allow-list of characters (letters, digits and a few punctuation marks), so
``x;touch /tmp/pwned``, ``$(...)`` and backticks are refused with one line naming the field. The values that pass
are still quoted with :func:`shlex.quote` where they form the remote command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
# a DNS name, an ssh_config Host alias, or an IPv4 address; never starting with '-' (an ssh option)
_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_REMOTE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ALLOWED_PATH = "letters, digits and _ . / + - (no spaces or shell characters)"


@dataclass(frozen=True)
class SshAddress:
    """``user@host:port`` split and checked; ``user`` and ``port`` may be left to ``~/.ssh/config``."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """What ``ssh`` takes as its destination argument (the port goes to ``-p``)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return self.destination.replace(self.host, host, 1) + (f":{self.port}" if self.port else "")


def parse_address(text: str) -> SshAddress:
    """Parses ``user@host[:port]``, ``host``, ``[v6addr]:port`` or ``ssh://user@host:port``.

    Raises:
        ValueError: one line saying which part is wrong and what is allowed.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty ssh address; expected user@host[:port]")
    raw = text[len("ssh://"):] if text.startswith("ssh://") else text
    raw = raw.rstrip("/") if text.startswith("ssh://") else raw
    user = None
    if "@" in raw:
        user, raw = raw.rsplit("@", 1)
        if not _USER.match(user):
            raise ValueError(f"ssh address {text!r}: user {user!r} is not a user name; allowed: letters, digits, "
                             "_ . - (starting with a letter or _)")
    port = None
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not _IPV6.match(host):
            raise ValueError(f"ssh address {text!r}: {raw!r} is not a bracketed IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"ssh address {text!r}: expected ':PORT' after ']'")
            port = _port(text, rest[1:])
    else:
        host, sep, p = raw.partition(":")
        if sep:
            port = _port(text, p)
        if not _HOST.match(host) or ".." in host:
            raise ValueError(f"ssh address {text!r}: host {host!r} is not a host name, IP address or ssh_config "
                             "alias; allowed: letters, digits, _ . - (not starting with -)")
    return SshAddress(host=host, user=user, port=port)


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"ssh address {text!r}: port {value!r} is not a number from 1 to 65535")
    return int(value)


def check_remote_path(field: str, value: str, *, absolute: bool = False) -> str:
    """A path on the target (its Python, its work folder): allow-listed characters only.

    Raises:
        ValueError: the value holds anything else (spaces, ``;``, ``$``, backticks, quotes), or is relative
            where an absolute path is needed.
    """
    if not _REMOTE_PATH.match(value or "") or value.startswith("-"):
        raise ValueError(f"{field} {value!r}: not allowed on a target; allowed: {ALLOWED_PATH}")
    if absolute and not value.startswith("/"):
        raise ValueError(f"{field} {value!r}: must be an absolute path on the target (starting with /)")
    return value
