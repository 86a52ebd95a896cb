"""``tvixctl watch`` and ``build`` resume after the daemon dies and comes back (SIGKILL, restart)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.tvixctl.helpers import GRAPH_NIX, Background, start_tvixd, tvixctl

pytestmark = pytest.mark.nix


def _building(lines: list[str]) -> bool:
    return any('"state": "build"' in line for line in lines)


def test_watch_and_build_resume_after_a_daemon_restart(tmp_path: Path) -> None:
    require_tool("nix-instantiate")
    nix_file = tmp_path / "graph.nix"
    nix_file.write_text(GRAPH_NIX)
    sock, state = tmp_path / "tvixd.sock", tmp_path / "state"
    service = "dummy://?delay=0.5"
    daemon = start_tvixd(sock, state, build_service=service)
    watcher = builder = None
    try:
        submitted = tvixctl("build", "--socket", str(sock), str(nix_file), "-A", "top", "--detach")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        watcher = Background("watch", "--socket", str(sock), "--json", job_id)
        # a build command following its own job
        builder = Background(
            "build", "--socket", str(sock), str(nix_file), "-A", "mid", "--argstr", "salt", "b",
            "--json",
        )  # fmt: skip
        watcher.read_until(_building)
        builder.read_until(lambda lines: any("building" in x for x in lines), "stderr")
        daemon.stop(signal.SIGKILL)  # the connections drop mid-stream; nothing is drained
        daemon = start_tvixd(sock, state, build_service=service)  # resumes the journal's jobs

        status, out, err = watcher.finish()
        assert status == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        # every event exactly once, in order, across the restart
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["state"] == "succeeded"
        assert "reconnecting" in err
        assert "reconnected; resuming at event" in err

        status, out, err = builder.finish()
        assert status == 0, err
        assert json.loads(out)["state"] == "succeeded"
        assert "reconnecting" in err
    finally:
        for process in (watcher, builder):
            if process is not None:
                process.kill()
        daemon.stop()


def test_gives_up_when_the_daemon_stays_away(tmp_path: Path) -> None:
    require_tool("nix-instantiate")
    nix_file = tmp_path / "graph.nix"
    nix_file.write_text(GRAPH_NIX)
    sock, state = tmp_path / "tvixd.sock", tmp_path / "state"
    daemon = start_tvixd(sock, state, build_service="dummy://?delay=5")
    watcher = None
    try:
        job_id = tvixctl(
            "build", "--socket", str(sock), str(nix_file), "-A", "leaf", "--detach"
        ).stdout.strip()
        watcher = Background(
            "watch", "--socket", str(sock), "--json", "--reconnect-timeout", "1", job_id
        )
        watcher.read_until(_building)
        daemon.stop(signal.SIGKILL)
        status, _, err = watcher.finish(seconds=30)
    finally:
        if watcher is not None:
            watcher.kill()
        daemon.stop()
    assert status == 1
    assert f"gave up watching job {job_id} after 1 s" in err
    assert str(sock) in err
