"""What the side-by-side benchmarks share: a tvixd daemon process, timing, the machine.

:class:`TvixDaemon` starts the real daemon (``python -m tvixd.main``) on a unix
socket with its own state directory and the embedded default backends, binds
a datagram socket as ``$NOTIFY_SOCKET`` and waits (with a deadline) for the
daemon's ``READY=1``; it stops it with SIGTERM (SIGKILL after a deadline).
:func:`process_cpu` reads a process's CPU seconds from ``/proc``.
:func:`machine` describes the machine for the results files.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_T = TypeVar("_T")

__all__ = [
    "PYTHON",
    "ROOT",
    "BenchError",
    "TvixDaemon",
    "machine",
    "process_cpu",
    "run",
    "timed",
]


class BenchError(RuntimeError):
    """A benchmark could not run (a tool failed, the daemon did not start)."""


def timed(fn: Callable[[], _T]) -> tuple[float, _T]:
    """``(seconds, result)`` of ``fn()`` on the monotonic clock."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    """Run a command; its stdout.  ``BenchError`` with its stderr tail when it fails."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise BenchError(f"{' '.join(argv[:4])} ... exited with {result.returncode}:\n{tail}")
    return result.stdout


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


@dataclass
class TvixDaemon:
    """A tvixd process on ``<work>/tvixd.sock`` with state in ``<work>/state``.

    ``build_service`` is a builder URL (``dummy://``, ``oci://...``; the default
    ``None`` is tvixd's own default, ``oci://STATE/builds``).  ``profile``
    writes a cProfile of the daemon there when it stops.
    """

    work: Path
    build_service: str | None = None
    max_jobs: int = 2
    profile: Path | None = None
    ready_timeout: float = 60.0
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> Path:
        return self.work / "tvixd.sock"

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def log(self) -> Path:
        """The daemon's stdout and stderr."""
        return self.work / "tvixd.log"

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"TvixDaemon({str(self.socket)!r}, {self.build_service or 'oci'}, pid={pid})"

    def start(self) -> TvixDaemon:
        self.work.mkdir(parents=True, exist_ok=True)
        argv = [PYTHON]
        if self.profile is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile)]
        argv += ["-m", "tvixd.main", "--listen", f"unix:{self.socket}"]
        argv += ["--state-dir", str(self.state), "--max-jobs", str(self.max_jobs)]
        argv += ["--log-level", "warning", *self.extra_args]
        if self.build_service is not None:
            argv += ["--build-service", self.build_service]
        with tempfile.TemporaryDirectory(prefix="tvixd-notify-") as tmp:
            notify = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
            try:
                notify.bind(f"{tmp}/notify")
                env = {k: v for k, v in os.environ.items() if not k.startswith("TVIXD_")}
                env["NOTIFY_SOCKET"] = f"{tmp}/notify"
                env["PYTHONPATH"] = str(ROOT)
                with open(self.log, "wb") as log:
                    self.process = subprocess.Popen(
                        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                self._wait_ready(notify)
            finally:
                notify.close()
        return self

    def _wait_ready(self, notify: pysocket.socket) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            left = deadline - time.monotonic()
            if self.process.poll() is not None or left <= 0:
                self.stop()
                log = self.log.read_text(errors="replace")[-2000:]
                raise BenchError(
                    f"tvixd did not become ready within {self.ready_timeout} s:\n{log}"
                )
            notify.settimeout(min(left, 0.5))
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                return

    def cpu(self) -> float:
        """The daemon's CPU seconds so far."""
        assert self.process is not None
        return process_cpu(self.process.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> TvixDaemon:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _first_line(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    """The machine and software the numbers were taken on."""
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_release(),
        "python": platform.python_version(),
        "nix": _first_line(["nix-build", "--version"]),
        "runc": _first_line(["runc", "--version"]),
        "load_average": list(os.getloadavg()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return ""
