"""Fixtures for the daemon tests: a fake systemd notify socket, configs on memory backends."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tvixd.config import Config, load_config


class NotifySocket:
    """A real ``AF_UNIX``/``SOCK_DGRAM`` socket playing systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)
        self.received: list[str] = []

    def pending(self) -> list[str]:
        """Every datagram received so far, without waiting."""
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(data.decode())

    async def wait_for(self, line: str, seconds: float = 20) -> list[str]:
        """Receive until a datagram contains ``line``; every datagram so far."""
        with anyio.fail_after(seconds):
            while not any(line in message.split("\n") for message in self.pending()):
                await anyio.wait_readable(self.socket)
        return self.received

    def lines(self) -> list[str]:
        return [line for message in self.pending() for line in message.split("\n")]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.socket.close()


def memory_config(tmp_path: Path, *listen: str, **flags: object) -> Config:
    """A config on memory backends and the dummy builder, listening on ``listen``."""
    values: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "listen": list(listen) or [f"unix:{tmp_path}/tvixd.sock"],
        "services.blob_service": "memory://",
        "services.directory_service": "memory://",
        "services.path_info_service": "memory://",
        "services.build_service": "dummy://",
        "shutdown_grace": "5",
    }
    values.update(flags)
    return load_config(
        config_file=None, flags=values, environ={}, is_root=os.geteuid() == 0, cwd=tmp_path
    )
