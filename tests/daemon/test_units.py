"""contrib/systemd: the units parse, and agree with the daemon's defaults."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tvixd.config import load_config
from tvixd.daemon import CLOSE_TIMEOUT, SWITCH_INTERVAL, tune_threads

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    parser.read(UNITS / name)
    return parser


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_service_matches_the_daemon() -> None:
    service = unit("tvixd.service")["Service"]
    defaults = load_config(config_file=None, flags={}, environ={}, is_root=True, cwd=Path("/"))
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[1:] == ["--listen", "systemd"]
    assert service["KillMode"] == "mixed"
    assert seconds(service["TimeoutStopSec"]) > defaults.shutdown_grace + 3 * CLOSE_TIMEOUT
    assert seconds(service["WatchdogSec"]) >= 10
    assert service["StateDirectory"] == defaults.state_dir.name == "tvixd"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    for breaks_runc in ("PrivateDevices", "ProtectKernelTunables", "ProtectControlGroups"):
        assert breaks_runc not in service


def test_socket_matches_the_default_socket() -> None:
    socket = unit("tvixd.socket")["Socket"]
    defaults = load_config(config_file=None, flags={}, environ={}, is_root=True, cwd=Path("/"))
    assert socket["ListenStream"] == str(defaults.listen[0].path)
    assert int(socket["SocketMode"], 8) == defaults.socket_mode == 0o660


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for name in ("tvixd.socket", "tvixd.service"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/tvixd", "/bin/true")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "tvixd.socket"), str(tmp_path / "tvixd.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    problems = [
        line for line in result.stderr.splitlines()
        if "tvixd." in line and ("Unknown" in line or "rror" in line or "invalid" in line)
    ]  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert problems == []


def test_tune_threads_shortens_the_switch_interval() -> None:
    """The daemon (owning its process) lets a waiting thread have the GIL after 0.5 ms."""
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        tune_threads()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert SWITCH_INTERVAL < 0.005
    finally:
        sys.setswitchinterval(before)
