"""``tvixctl logs -f`` resumes after the daemon dies and comes back (SIGKILL, restart).

A real build (the OCI builder, runc) writes numbered lines slowly; the daemon
is killed while ``logs -f`` follows it and restarted on the same socket and
state directory, where the build starts again and appends to the stored log.
``logs -f`` must print that stored log exactly: every line once.  (On a
machine so loaded that the build ends before the kill lands, it is run
again with longer pauses between lines.)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.tvixctl.helpers import GRAPH_NIX, Background, start_tvixd, tvixctl

pytestmark = pytest.mark.nix

LINES = 20
#: Seconds between the build's lines, tried in turn: the daemon must be killed while the
#: build runs, and a loaded machine may take longer to start ``logs -f`` than a quick build.
PAUSES = (0.15, 0.5, 1.5)


def logger_nix(pause: float) -> str:
    loop = f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); sleep {pause}; done"
    return f"""\
{{ top = derivation {{
    name = "logger"; system = "x86_64-linux"; builder = "/bin/sh"; salt = "logs-follow-{pause}";
    args = [ "-c" "{loop}; echo done > $out" ];
  }}; }}
"""


def _instantiate(nix_file: Path, attr: str) -> str:
    done = subprocess.run(
        ["nix-instantiate", str(nix_file), "-A", attr],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def _building(lines: list[str]) -> bool:
    return any('"state": "build"' in line for line in lines)


@dataclass
class Followed:
    """What ``logs -f`` printed across the restart, and the log stored afterwards."""

    before: list[str]  # printed before the kill
    out: str
    err: str
    stored: str
    daemon_said: str


def follow_across_a_restart(work: Path, pause: float) -> Followed:
    """Build the logger, follow its log, SIGKILL the daemon after 3 lines, restart it."""
    work.mkdir()
    nix_file = work / "logger.nix"
    nix_file.write_text(logger_nix(pause))
    drv = _instantiate(nix_file, "top")
    sock, state = work / "tvixd.sock", work / "state"
    service = f"oci://{state}/builds"
    daemon = start_tvixd(sock, state, build_service=service)
    watcher = follower = None
    try:
        submitted = tvixctl("build", "--socket", str(sock), str(nix_file), "-A", "top", "--detach")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        watcher = Background("watch", "--socket", str(sock), "--json", "--quiet", job_id)
        watcher.read_until(_building)
        follower = Background("logs", "--socket", str(sock), "-f", drv)
        before = follower.read_until(lambda lines: len(lines) >= 3)
        daemon.stop(signal.SIGKILL)  # mid-build (unless it was quicker), mid-stream
        daemon = start_tvixd(sock, state, build_service=service)  # the build starts again

        status, out, err = follower.finish()
        assert status == 0, err
        status, _, werr = watcher.finish()
        assert status == 0, werr
        stored = tvixctl("logs", "--socket", str(sock), drv)
        assert stored.returncode == 0, stored.stderr
    finally:
        for process in (watcher, follower):
            if process is not None:
                process.kill()
        daemon.stop()
    return Followed(before, out, err, stored.stdout, daemon.log_text())


def test_logs_follow_resumes_after_a_daemon_restart(tmp_path: Path) -> None:
    require_tool("nix-instantiate")
    require_tool("runc")
    one_run = "".join(f"line {i}\n" for i in range(LINES))
    for pause in PAUSES:
        run = follow_across_a_restart(tmp_path / f"pause-{pause}", pause)
        said = f"tvixctl said:\n{run.err}\ntvixd said:\n{run.daemon_said}"
        if run.stored.count("\n") > LINES:  # the kill interrupted the build: it ran again
            break
        # the build had ended before the kill, with the follower behind (a loaded machine):
        # one run's log, printed once; again, slower
        assert run.out == run.stored == one_run, said
    else:
        pytest.fail(f"no build was interrupted by the kill (pauses {PAUSES}); the last:\n{said}")
    # every stored line exactly once, in order: what the first run committed, then the second run
    assert run.out == run.stored, said
    printed = run.out.splitlines()
    second = [f"line {i}" for i in range(LINES)]
    first = printed[: len(printed) - LINES]
    assert printed[len(first) :] == second, said
    assert first == second[: len(first)], said
    assert len(first) >= len(run.before), said
    assert run.err.count("reconnecting ...") == 1, said
    assert re.search(r"^tvixctl: reconnected; resuming after line \d+$", run.err, re.M), said
    assert "warning" not in run.err, said


def test_logs_follow_json_resumes_and_gives_up(tmp_path: Path) -> None:
    """``--json`` goes through the same path; a daemon that stays away ends it with status 1."""
    require_tool("nix-instantiate")
    nix_file = tmp_path / "graph.nix"
    nix_file.write_text(GRAPH_NIX)
    drv = _instantiate(nix_file, "leaf")
    sock, state = tmp_path / "tvixd.sock", tmp_path / "state"
    daemon = start_tvixd(sock, state, build_service="dummy://?delay=30")
    watcher = follower = None
    try:
        submitted = tvixctl("build", "--socket", str(sock), str(nix_file), "-A", "leaf", "--detach")
        assert submitted.returncode == 0, submitted.stderr
        watcher = Background(
            "watch", "--socket", str(sock), "--json", "--quiet", submitted.stdout.strip()
        )
        watcher.read_until(_building)
        args = ["logs", "--socket", str(sock), "-f", "--json", "--reconnect-timeout", "1", drv]
        follower = Background(*args)
        (first,) = follower.read_until(lambda lines: len(lines) >= 1)
        daemon.stop(signal.SIGKILL)
        status, out, err = follower.finish(seconds=30)
    finally:
        for process in (watcher, follower):
            if process is not None:
                process.kill()
        daemon.stop()
    assert json.loads(first) == {"drv_path": drv, "attempt": 1, "line": first_line(drv)}
    assert out == first  # nothing printed twice while retrying
    assert status == 1
    assert err.count("reconnecting ...") == 1, err
    assert f"gave up following the log of {drv} after 1 s" in err
    assert str(sock) in err


def first_line(drv: str) -> str:
    """The dummy builder's one log line for ``drv`` (its output ``out``)."""
    derivation = json.loads(
        subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "show-derivation", drv],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    out = derivation[drv]["outputs"]["out"]["path"]
    return f"dummy build of {out}"
