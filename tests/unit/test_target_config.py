"""The targets: section and target addresses: what is accepted, and one clear line for what is not."""

from __future__ import annotations

import pytest

from kd2deploy.config import load_config
from kd2deploy.errors import ConfigError
from kd2deploy.targets.address import SshAddress, check_remote_path, parse_address
from kd2deploy.targets.config import TargetConfig, adhoc_target
from kd2deploy.targets.ssh import bootstrap_command, ssh_argv


@pytest.mark.parametrize("text, expected", [
    ("pi@board-1.local", SshAddress("board-1.local", "pi", None)),
    ("pi@10.0.0.7:2222", SshAddress("10.0.0.7", "pi", 2222)),
    ("board", SshAddress("board", None, None)),
    ("ssh://root@127.0.0.1:2200", SshAddress("127.0.0.1", "root", 2200)),
    ("ssh://u@[fe80::1]:22/", SshAddress("fe80::1", "u", 22)),
    ("jetson_orin", SshAddress("jetson_orin", None, None)),
])
def test_addresses_that_parse(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, part", [
    ("pi@board:0", "port"), ("pi@board:99999", "port"), ("pi@board:22x", "port"), ("-oProxyCommand=x", "host"),
    ("pi@", "host"), ("p i@board", "user"), ("pi@bo ard", "host"), ("pi@a..b", "host"), ("pi@[zz]:22", "IPv6"),
    ("x;y@board", "user"), ("pi@$(id)", "host"), ("pi@`id`", "host"), ("pi@b|c", "host"), ("", "empty"),
])
def test_addresses_that_are_refused(text, part):
    with pytest.raises(ValueError) as e:
        parse_address(text)
    assert part in str(e.value) and "\n" not in str(e.value)


def test_remote_paths():
    assert check_remote_path("python", "/home/pi/venv/bin/python3.11") == "/home/pi/venv/bin/python3.11"
    for bad in ("python3 -c x", "a;b", "$HOME/py", "-x", "a'b", 'a"b', "~/py"):
        with pytest.raises(ValueError, match="not allowed on a target"):
            check_remote_path("python", bad)
    with pytest.raises(ValueError, match="absolute"):
        check_remote_path("workdir", "tmp", absolute=True)


def _write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_targets_section_defaults_and_errors(tmp_path):
    cfg = load_config(_write(tmp_path, "targets:\n  - {name: b1, ssh: pi@b1}\n"))
    t = cfg.targets[0]
    assert (t.python, t.workdir, t.accept_new_host_key, t.required, t.providers) == (
        "python3", None, False, False, ["CPUExecutionProvider"])
    assert t.energy.sensor == "auto" and t.energy.cpu_power_w is None
    cases = [
        ("targets:\n  - {name: b1, ssh: pi@b1}\n  - {name: b1, ssh: pi@b2}\n", "used twice"),
        ("targets:\n  - {name: local, ssh: pi@b1}\n", "reserved"),
        ("targets:\n  - {name: b1, ssh: pi@b1, identity_file: nokey}\n", "identity_file: file not found"),
        ("targets:\n  - {name: b1, ssh: pi@b1, pyhton: python3}\n", "did you mean 'python'"),
        ("targets:\n  - {name: b1, ssh: 'pi@b1;id'}\n", "targets.0.ssh"),
        ("targets:\n  - {name: b1, ssh: pi@b1, energy: {sensor: watts}}\n", "targets.0.energy.sensor"),
        ("targets:\n  - {name: b1, ssh: pi@b1, providers: ['CPU; rm']}\n", "not an onnxruntime provider"),
    ]
    for text, expected in cases:
        with pytest.raises(ConfigError) as e:
            load_config(_write(tmp_path, text))
        assert expected in str(e.value) and str(e.value).startswith(str(tmp_path / "p.yaml")), str(e.value)


def test_targets_are_a_stage_only_when_listed(tmp_path):
    from kd2deploy.stages import stages_for

    with_targets = load_config(_write(tmp_path, "targets:\n  - {name: b1, ssh: pi@b1}\n"))
    names = [s.name for s in stages_for(with_targets)]
    assert names[-3:] == ["ship", "targets", "report"]
    assert "targets" not in [s.name for s in stages_for(load_config(_write(tmp_path, "seed: 1\n")))]


def test_ssh_argv_is_a_list_with_strict_options(tmp_path):
    key = tmp_path / "k"
    key.write_text("x")
    t = TargetConfig(name="b", ssh="pi@10.0.0.7:2222", identity_file=key, known_hosts=tmp_path / "kh dir" / "kh")
    argv = ssh_argv(t, "REMOTE")
    assert argv[0] == "ssh" and argv[-3:] == ["--", "pi@10.0.0.7", "REMOTE"]
    joined = " ".join(argv)
    for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=10", "IdentitiesOnly=yes", "-p 2222"):
        assert opt in joined
    assert f'UserKnownHostsFile="{tmp_path / "kh dir" / "kh"}"' in argv
    t2 = TargetConfig(name="b", ssh="pi@b", accept_new_host_key=True, python="/opt/py/bin/python3", workdir="/data")
    assert "StrictHostKeyChecking=accept-new" in ssh_argv(t2, "x")
    cmd = bootstrap_command(t2, 60)
    assert cmd.startswith("/opt/py/bin/python3 -c '") and cmd.endswith(" /data 60")


def test_adhoc_target_from_a_url():
    t = adhoc_target("ssh://root@127.0.0.1:2200", python="/usr/bin/python3", identity_file=None)
    assert t.name == "127.0.0.1" and t.address.port == 2200 and t.python == "/usr/bin/python3"
