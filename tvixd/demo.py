"""``./dev demo`` (``python -m tvixd.demo``): build examples/demo.nix through a real tvixd.

What it does, each step shown as the command it amounts to:

1. starts ``tvixd`` with the embedded default backends (objectstore blobs,
   SQLite directories and path infos, the runc builder, the Nix evaluator)
   on a socket in a temporary directory, with its state in the demo's state
   directory — ``--state-dir DIR``, default ``$XDG_STATE_HOME/tvixd-demo``
   (``~/.local/state/tvixd-demo``), kept between runs so a second run is
   answered from the store; delete it to start afresh;
2. runs ``tvixctl build examples/demo.nix -o STATE/result`` against it (its
   progress goes straight to the terminal);
3. prints every file of the result and runs ``result/bin/hello``;
4. stops the daemon.

The exit status is non-zero when any step fails (missing tools are named,
with ``./dev demo`` as the way to install them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread

from clients.tvixctl.common import CommandError
from clients.tvixctl.embedded import embedded_daemon, tvixd_command

__all__ = ["default_demo_state_dir", "main", "show_tree"]

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILE = ROOT / "examples" / "demo.nix"
TOOLS = ("nix-instantiate", "nix-store", "runc")


def default_demo_state_dir() -> Path:
    """``$XDG_STATE_HOME/tvixd-demo``, else ``~/.local/state/tvixd-demo``."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state_home) / "tvixd-demo"


def show_tree(root: Path) -> str:
    """Every entry under ``root``, sorted: directories as ``name/``, symlinks with their target,
    regular files with their (text) contents indented."""
    lines = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            lines.append(f"  {name} -> {os.readlink(path)}")
        elif path.is_dir():
            lines.append(f"  {name}/")
        else:
            mode = " (executable)" if os.access(path, os.X_OK) else ""
            lines.append(f"  {name}{mode}:")
            text = path.read_bytes().decode("utf-8", errors="backslashreplace")
            lines += [f"    | {line}" for line in text.splitlines()]
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, flush=True)


def _check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not os.path.exists("/bin/busybox"):
        missing.append("/bin/busybox (busybox-static)")
    if missing:
        raise CommandError(
            f"missing: {', '.join(missing)}; './dev demo' installs them (Debian: nix-bin, runc, "
            "busybox-static)"
        )
    if not DEMO_FILE.is_file():
        raise CommandError(f"{DEMO_FILE} is missing: run the demo from a clone of the repository")


async def run_demo(state_dir: Path) -> int:
    """The demo (see the module docstring); the exit status."""
    await anyio.to_thread.run_sync(_check_tools)
    await anyio.to_thread.run_sync(lambda: state_dir.mkdir(parents=True, exist_ok=True))
    result = state_dir / "result"
    async with embedded_daemon(state_dir, log=state_dir / "tvixd.log") as daemon:
        _say(f"$ {' '.join(tvixd_command())} --listen unix:{daemon.socket} --state-dir {state_dir}")
        _say(f"tvixd is ready (pid {daemon.pid}); its log goes to {daemon.log}\n")
        argv = ["build", "--socket", daemon.socket, str(DEMO_FILE), "-o", str(result)]
        _say(f"$ tvixctl {' '.join(argv)}")
        process = await anyio.open_process(
            [sys.executable, "-m", "clients.tvixctl", *argv],
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
        )
        async with process:
            status = await process.wait()
        if status != 0:
            _say(f"\ntvixd demo: tvixctl build failed with exit status {status}")
            return status
    _say(f"\nThe result, {result} (a real directory, exported from tvixd's store):")
    _say(await anyio.to_thread.run_sync(show_tree, result))
    hello = result / "bin" / "hello"
    _say(f"\n$ {hello}")
    ran = await anyio.run_process([str(hello)], check=False)
    _say(ran.stdout.decode(errors="replace").rstrip())
    if ran.returncode != 0:
        _say(f"tvixd demo: {hello} failed with exit status {ran.returncode}")
        return ran.returncode or 1
    _say(
        f"\nDone. Run it again to see the store answer it (state in {state_dir}; delete it to "
        "start afresh).\nOn your own: start 'tvixd' (see docs/daemon.md), then "
        "'tvixctl build examples/demo.nix -o result' — or 'tvixctl build --embedded ...'."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the demo, return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tvixd.demo",
        description="Build examples/demo.nix through tvixd with the embedded default backends.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the daemon's state directory (default: $XDG_STATE_HOME/tvixd-demo, "
        "~/.local/state/tvixd-demo)",
    )
    args = parser.parse_args(argv)
    state_dir = Path(os.path.abspath(args.state_dir or default_demo_state_dir()))
    try:
        return anyio.run(run_demo, state_dir)
    except CommandError as exc:
        print(f"tvixd demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
