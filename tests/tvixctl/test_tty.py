"""``tvixctl build`` on a terminal: the live view (run under a pseudo-terminal)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.tvixctl.conftest import Served
from tests.tvixctl.helpers import ROOT, environment

pytestmark = pytest.mark.nix

COLUMNS = 60
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(argv: list[str], columns: int, seconds: float = 60) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a new pty ``columns`` wide; status, output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
        env=environment(TERM="xterm"), close_fds=True,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "timed out: " + b"".join(chunks).decode(errors="replace")
            readable, _, _ = select.select([master], [], [], left)
            if not readable:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
        status = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, b"".join(chunks).decode(errors="replace")


def test_live_view_on_a_terminal(served: Served) -> None:
    argv = [
        sys.executable, "-m", "clients.tvixctl", "build", "--socket", served.socket,
        str(served.nix_file), "-A", "top", "-A", "multi", "--argstr", "salt", served.salt(),
    ]  # fmt: skip
    status, output = run_in_pty(argv, COLUMNS)
    assert status == 0, output
    assert "\x1b[?25l" in output  # the cursor is hidden while drawing ...
    assert output.rindex("\x1b[?25h") > output.rindex("\x1b[?25l")  # ... and shown again
    assert re.search(r"\x1b\[\d+F\x1b\[J", output)  # the block is redrawn in place
    screen_lines = [_ESCAPE.sub("", line).strip("\r") for line in output.split("\n")]
    status_lines = [line for line in screen_lines if " done · " in line]
    assert status_lines, output
    assert any(re.search(r"\d+ done · \d+ building · \d+ waiting", s) for s in status_lines)
    for line in status_lines:  # the live block never wraps
        assert len(line) < COLUMNS, line
    assert any(line.startswith("built top") for line in screen_lines), output
    final = [line for line in screen_lines if line.startswith("job ")]
    assert final, output
    assert "succeeded" in final[-1]
    assert "4 built" in final[-1]
    outputs = [line for line in screen_lines if re.fullmatch(r"/nix/store/\S+", line)]
    assert sorted(line.rsplit("-", 1)[-1] for line in outputs) == ["dev", "multi", "top"], output
