"""A real tvixd subprocess on a unix socket, ``tvixctl`` subprocesses, and Nix files for them.

Every test here drives the installed entry points the way a user does:
``python -m tvixd.main`` (readiness through a ``NOTIFY_SOCKET`` bound here)
and ``python -m clients.tvixctl``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Derivations for the dummy builder (it runs nothing; DUMMY_BUILD_FAIL fails one on purpose).
GRAPH_NIX = """\
{ salt ? "" }:
let
  mk = name: attrs: derivation ({
    inherit name salt; system = "x86_64-linux"; builder = "/bin/sh";
  } // attrs);
  leaf = mk "leaf" { };
  mid = mk "mid" { inherit leaf; };
  chain = n: if n == 0 then leaf else mk "step-${toString n}" { prev = chain (n - 1); };
in {
  top = mk "top" { inherit mid; };
  multi = mk "multi" { outputs = [ "out" "dev" ]; inherit leaf; };
  broken = mk "broken" { inherit leaf; DUMMY_BUILD_FAIL = "broken on purpose"; };
  slow = chain 8;
  slower = chain 60;  # only ever cancelled
  inherit leaf mid;
}
"""


def environment(**extra: str) -> dict[str, str]:
    """The environment of subprocesses: this checkout importable, no tvixd/systemd settings."""
    drop = ("TVIXD_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def tvixctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``tvixctl ARGS`` to its end (stdout and stderr captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "clients.tvixctl", *args],
        capture_output=True,
        text=True,
        env=env or environment(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


class Background:
    """``tvixctl ARGS`` running in the background, its output read as it comes without losing any.

    The pipes are unbuffered, so what :meth:`read_until` has not consumed is
    still in the pipe (or in this object) for :meth:`finish`.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clients.tvixctl", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=env or environment(),
            cwd=ROOT,
        )
        self._read: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

    def read_until(
        self, done: Callable[[list[str]], bool], stream: str = "stdout", seconds: float = 30
    ) -> list[str]:
        """The complete lines of ``stream`` so far, reading until ``done(lines)`` holds."""
        pipe = getattr(self.process, stream)
        deadline = time.monotonic() + seconds
        while not done(lines := self.lines(stream)):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; {stream} so far: {lines}"
            readable, _, _ = select.select([pipe], [], [], left)
            if readable:
                data = os.read(pipe.fileno(), 65536)
                assert data, f"{stream} ended; so far: {lines}"
                self._read[stream].append(data)
        return lines

    def lines(self, stream: str = "stdout") -> list[str]:
        text = b"".join(self._read[stream]).decode(errors="replace")
        return text.splitlines(keepends=True)[: text.count("\n")]

    def finish(self, seconds: float = 60) -> tuple[int, str, str]:
        """Wait for the exit: its status, and all of stdout and stderr (including what was read)."""
        out, err = self.process.communicate(timeout=seconds)
        self._read["stdout"].append(out)
        self._read["stderr"].append(err)
        return (
            self.process.returncode,
            b"".join(self._read["stdout"]).decode(errors="replace"),
            b"".join(self._read["stderr"]).decode(errors="replace"),
        )

    def kill(self) -> None:
        """Kill it unless it has exited (cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@dataclass
class Daemon:
    """A running ``tvixd``."""

    socket: Path
    state: Path
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self, signum: int = signal.SIGTERM, seconds: float = 30) -> int:
        """Signal it and wait for its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=seconds)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_tvixd(
    socket_path: Path, state: Path, *, build_service: str = "dummy://", seconds: float = 30
) -> Daemon:
    """``tvixd`` on ``socket_path`` with its default backends in ``state`` (but ``build_service``),
    once it has said ``READY=1``."""
    notify_path = state.parent / f".notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = state.parent / f"{state.name}.log"
    argv = [
        sys.executable, "-m", "tvixd.main", "--listen", f"unix:{socket_path}",
        "--state-dir", str(state), "--build-service", build_service, "--shutdown-grace", "5",
    ]  # fmt: skip
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=environment(NOTIFY_SOCKET=str(notify_path)),
            cwd=ROOT,
        )
    daemon = Daemon(socket_path, state, log, process)
    try:
        deadline = time.monotonic() + seconds
        notify.settimeout(0.5)
        while True:
            assert process.poll() is None, f"tvixd exited early:\n{daemon.log_text()}"
            assert time.monotonic() < deadline, f"tvixd not ready:\n{daemon.log_text()}"
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                return daemon
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        notify.close()
        notify_path.unlink(missing_ok=True)


@contextmanager
def running_tvixd(
    socket_path: Path, state: Path, *, build_service: str = "dummy://"
) -> Iterator[Daemon]:
    """:func:`start_tvixd` for the duration of the block; it must then stop cleanly."""
    daemon = start_tvixd(socket_path, state, build_service=build_service)
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            status = daemon.stop()
            assert status == 0, daemon.log_text()
