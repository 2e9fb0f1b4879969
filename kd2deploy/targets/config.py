"""The ``targets:`` section of a pipeline file: edge devices reached over SSH, each benchmarked after the local run.

Every default lives here; ``kd2deploy/config.py`` adds ``targets: list[TargetConfig]`` to the pipeline schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from kd2deploy.strict import PositiveFloat, PositiveInt, Strict
from kd2deploy.targets.address import NAME, check_remote_path, parse_address

SENSORS = ("auto", "rapl", "ina3221", "pi5-pmic", "none")


def _local_path(value: Path | None, info: ValidationInfo, must_exist: bool) -> Path | None:
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = (value if value.expanduser().is_absolute() else base / value).expanduser()
    if must_exist and not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path.resolve()


class TargetEnergy(Strict):
    """Energy on the target: a sensor read around each window when there is one, else the modelled profile."""

    enabled: bool = True
    sensor: Literal["auto", "rapl", "ina3221", "pi5-pmic", "none"] = Field(
        "auto", description="auto: the first of rapl (Linux powercap), ina3221 (Jetson hwmon rails), pi5-pmic "
        "(Raspberry Pi 5 vcgencmd pmic_read_adc) that the target can read; none: modelled only")
    cpu_power_w: PositiveFloat | None = Field(
        None, description="the target's power while it runs inference (datasheet or a wall meter); used, labelled "
        "modelled, when no sensor is read")
    window_s: PositiveFloat | None = Field(None, description="seconds per window (and per idle window); default "
                                           "energy.window_s")
    repeats: PositiveInt | None = Field(None, description="rounds of windows; default energy.repeats")
    batch_size: PositiveInt | None = Field(None, description="default energy.batch_size")
    idle_baseline: bool = True


class TargetConfig(Strict):
    """One edge device reached with the system's OpenSSH client (``~/.ssh/config``, agents, ProxyJump work)."""

    name: Annotated[str, Field(pattern=NAME.pattern)]
    ssh: str = Field(description="user@host[:port] or ssh://user@host:port (host may be an ssh_config alias)")
    identity_file: Path | None = Field(None, description="private key (ssh -i), with IdentitiesOnly=yes")
    known_hosts: Path | None = Field(None, description="known_hosts file for this target (default: ssh's own)")
    ssh_config: Path | None = Field(None, description="an ssh_config file (ssh -F) instead of ~/.ssh/config")
    accept_new_host_key: bool = Field(
        False, description="accept and remember a host key seen for the first time (StrictHostKeyChecking="
        "accept-new); default: an unknown host key is an error. A changed key is always an error")
    python: str = Field("python3", description="the Python on the target that has numpy and onnxruntime")
    workdir: str | None = Field(None, description="absolute folder on the target that holds the temporary "
                                "folder (default: the target's TMPDIR or /tmp)")
    threads: PositiveInt | None = Field(None, description="intra-op threads there; default "
                                        "benchmark.intra_op_threads")
    providers: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime execution providers there, in "
        "priority order")
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] | None = Field(
        None, description="default benchmark.batch_sizes")
    energy: TargetEnergy = Field(default_factory=TargetEnergy)
    required: bool = Field(False, description="a target that fails stops the run (exit 1, local files kept); "
                           "otherwise the report says which target is missing and why")
    connect_timeout_s: PositiveInt = Field(10, description="ssh ConnectTimeout")
    timeout_s: PositiveFloat = Field(900.0, description="the most seconds the remote benchmark may run")

    @field_validator("ssh")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        return check_remote_path("python", v)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        return None if v is None else check_remote_path("workdir", v, absolute=True)

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.isidentifier():
                raise ValueError(f"provider {p!r} is not an onnxruntime provider name (e.g. CPUExecutionProvider)")
        return v

    @field_validator("identity_file", "ssh_config")
    @classmethod
    def _existing(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _local_path(v, info, must_exist=True)

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _local_path(v, info, must_exist=False)

    @property
    def address(self):
        """The parsed :class:`~kd2deploy.targets.address.SshAddress`."""
        return parse_address(self.ssh)


def adhoc_target(ssh: str, **kwargs) -> TargetConfig:
    """A target from ``--target ssh://user@host:port`` on the command line, named after its host."""
    addr = parse_address(ssh)
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in addr.host).strip("-.") or "target"
    return TargetConfig(name=name[:64], ssh=ssh, **{k: v for k, v in kwargs.items() if v is not None})
