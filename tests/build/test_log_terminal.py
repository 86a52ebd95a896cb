"""The build's output terminal: raw like Nix's, a pipe where there is no pseudoterminal."""

from __future__ import annotations

import os
import termios

import pytest

from tvixd.build.oci.runner import log_terminal


def _roundtrip(master: int, slave: int) -> bytes:
    os.write(slave, b"a\nb\r\n\x03\x1a\tc")
    os.close(slave)
    data = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    return data


def test_a_raw_terminal() -> None:
    master, slave = log_terminal()
    assert os.isatty(slave)
    iflag, oflag, _, lflag, _, _, _ = termios.tcgetattr(slave)
    assert not oflag & termios.OPOST
    assert not iflag & (termios.ICRNL | termios.IXON)
    assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
    # bytes pass unchanged: no \n -> \r\n, control characters kept
    assert _roundtrip(master, slave) == b"a\nb\r\n\x03\x1a\tc"


def test_a_pipe_without_pseudoterminals(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_pty() -> tuple[int, int]:
        raise OSError(2, "No such file or directory", "/dev/ptmx")

    monkeypatch.setattr(os, "openpty", no_pty)
    master, slave = log_terminal()
    assert not os.isatty(slave)
    assert _roundtrip(master, slave) == b"a\nb\r\n\x03\x1a\tc"
    assert "no pseudoterminal for the build's output" in caplog.text
