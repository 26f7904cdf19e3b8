"""Command line and configuration file: the contract's flags, YAML keys, precedence and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dnsd import __version__
from dnsd import config as config_module
from tests.dnsd_process import EXAMPLE_MANIFESTS, REPO, DnsdProcess, rdata_texts


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dnsd {__version__}"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--zone", "c2.k8s.ooo", "--ttl", "abc"], "ttl"),
        (["--zone", "c2.k8s.ooo", "--listen", "127.0.0.1"], "listen"),
        (["--zone", "c2.k8s.ooo", "--dns64-prefix", "64:ff9b::/80"], "dns64_prefix"),
        (["--zone", "c2.k8s.ooo", "--dns64-prefix", "2001:db8:0:0:ff00::/96"], "dns64_prefix"),
        (["--zone", "c2.k8s.ooo", "--reverse-zone", "2001:db8::/30"], "reverse_zone"),
        (["--zone", "c2.k8s.ooo", "--recursion", "sometimes"], "recursion"),
        (["--zone", "c2.k8s.ooo", "--recursion", "forward"], "forwarder"),
        (["--zone", "c2.k8s.ooo", "--allow-recursion", "10.0.0.1/8"], "allow_recursion"),
        (["--zone", "c2.k8s.ooo", "--cluster-domain", "c3.other.example"], "cluster_domain"),
        (["--zone", "bad..name"], "zone"),
        (["--ttl", "5"], "zone"),
        (["--zone", "c2.k8s.ooo", "--no-such-flag"], "command line"),
    ],
)
def test_bad_flags_stop_startup_with_one_line_naming_the_key(args: list[str], key: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dnsd: configuration error: {key}: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("zone: c2.k8s.ooo\nttl: -1\n", "ttl"),
        ("zone: c2.k8s.ooo\nlisten_on: 1\n", "listen_on"),
        ("zone: c2.k8s.ooo\nlisten: [1.2.3.4]\n", "listen"),
        ("zone: c2.k8s.ooo\nworkers: many\n", "workers"),
        ("zone: c2.k8s.ooo\nttl: [1]\n", "ttl"),
        ("zone: [c2.k8s.ooo\n", "config"),
        ("- just a list\n", "config"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "dnsd.yaml"
    path.write_text(body)
    result = _run("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dnsd: configuration error: {key}: "), result.stderr


def test_yaml_keys_mirror_flags_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "dnsd.yaml"
    path.write_text(
        "zone: c2.k8s.ooo\nttl: 77\nrecursion: 'off'\nreverse_zone: [2001:db8:42::/48]\n"
        "nameserver: [ns1.c2.k8s.ooo=2001:db8:53::53, ns2.elsewhere.example]\n"
        f"source: file:{EXAMPLE_MANIFESTS}\nno_dns64: true\nlisten: ['127.0.0.1:1']\n"
    )
    cfg = config_module.load(["--config", str(path), "--ttl", "12", "--listen", "127.0.0.1:2"])
    assert cfg.ttl == 12  # flag wins
    assert [str(e) for e in cfg.listen] == ["127.0.0.1:2"]  # a repeated flag replaces the file's list
    assert cfg.no_dns64 is True
    assert [ns.name for ns in cfg.nameserver] == ["ns1.c2.k8s.ooo", "ns2.elsewhere.example"]
    assert cfg.cluster_domain == "c2.k8s.ooo"
    assert str(cfg.dns64_prefix) == "64:ff9b::/96"


def test_every_option_has_a_flag_and_a_yaml_key() -> None:
    parser = config_module.build_parser()
    flags = {a for action in parser._actions for a in action.option_strings}
    for opt in config_module.OPTIONS:
        assert opt.flag in flags
        assert opt.flag == "--" + opt.key.replace("_", "-")
    contract = ["zone", "cluster_domain", "listen", "source", "kubeconfig", "nameserver", "ttl", "reverse_zone",
                "recursion", "forwarder", "root_hints", "allow_recursion", "dns64_prefix", "no_dns64", "http",
                "log_level", "log_format", "workers", "rrl_responses_per_second", "rrl_slip"]
    assert set(contract) <= {opt.key for opt in config_module.OPTIONS}


def test_config_file_serves_the_example(tmp_path: Path) -> None:
    path = tmp_path / "dnsd.yaml"
    path.write_text((REPO / "examples/dnsd.yaml").read_text())
    with DnsdProcess("--config", str(path), "--source", f"file:{EXAMPLE_MANIFESTS}") as proc:
        reply = proc.query("sample-service.default.svc.c2.k8s.ooo", "AAAA")
        assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]


def test_unreadable_manifests_stop_startup_with_exit_3(tmp_path: Path) -> None:
    result = _run("--zone", "c2.k8s.ooo", "--source", f"file:{tmp_path / 'missing.yaml'}",
                  "--listen", "127.0.0.1:0", "--http", "off")
    assert result.returncode == 3
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr


def test_port_held_by_another_program_exits_3() -> None:
    import socket

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: dnsd cannot share it
    blocker.bind(("127.0.0.1", 0))
    try:
        port = blocker.getsockname()[1]
        result = _run("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}",
                      "--listen", f"127.0.0.1:{port}", "--http", "off")
        assert result.returncode == 3
        assert "cannot bind" in result.stderr and "Traceback" not in result.stderr
    finally:
        blocker.close()
