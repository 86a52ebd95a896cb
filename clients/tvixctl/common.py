"""What every ``tvixctl`` command shares: the default socket, common options, the runner.

The default socket is where ``tvixd`` listens when started without
``--listen`` (mirrors ``tvixd.config.default_socket``, which ``clients`` may
not import; a test checks they agree): ``$TVIXD_SOCKET`` when set, else
``/run/tvixd/tvixd.sock`` as root, else ``$XDG_RUNTIME_DIR/tvixd/tvixd.sock``,
else ``STATE/tvixd.sock`` where ``STATE`` is ``$TVIXD_STATE_DIR`` or
``$XDG_STATE_HOME/tvixd`` (``~/.local/state/tvixd``).

A command is an ``async`` function of the parsed arguments returning the
exit status; :func:`runner` turns it into ``args.run``.  Expected failures
are :class:`CommandError` (message on stderr, exit 1); task groups' exception
groups are unwrapped to the error that matters.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio

from clients.errors import StoreError
from nixcompat.errors import NixCompatError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "CommandError",
    "add_common",
    "default_socket",
    "default_state_dir",
    "leaf_error",
    "runner",
]

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report on stderr (exit code 1), without a traceback."""


def _is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir(
    environ: Mapping[str, str] | None = None, is_root: bool | None = None
) -> Path:
    """tvixd's state directory when it is not configured: ``$TVIXD_STATE_DIR``, else its default."""
    environ = os.environ if environ is None else environ
    if environ.get("TVIXD_STATE_DIR"):
        return Path(os.path.abspath(os.path.expanduser(environ["TVIXD_STATE_DIR"])))
    if _is_root() if is_root is None else is_root:
        return Path("/var/lib/tvixd")
    state_home = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state_home) / "tvixd"


def default_socket(environ: Mapping[str, str] | None = None, is_root: bool | None = None) -> str:
    """``$TVIXD_SOCKET``, else the socket tvixd listens on by default (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get("TVIXD_SOCKET"):
        return environ["TVIXD_SOCKET"]
    if _is_root() if is_root is None else is_root:
        return "/run/tvixd/tvixd.sock"
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return str(Path(runtime) / "tvixd" / "tvixd.sock")
    return str(default_state_dir(environ, is_root=False) / "tvixd.sock")


def add_common(parser: argparse.ArgumentParser, *, json_help: str | None = None) -> None:
    """``--socket PATH`` and (with ``json_help``) ``--json`` on ``parser``."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=default_socket(),
        help="the daemon's unix socket (default: $TVIXD_SOCKET or tvixd's default, "
        "here %(default)s)",
    )
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)


def leaf_error(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups of one error each; else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


Command = Callable[[argparse.Namespace], Awaitable[int]]


def runner(command: Command) -> Callable[[argparse.Namespace], int]:
    """``args.run`` for ``command``: runs it on an event loop, reports expected errors."""

    def run(args: argparse.Namespace) -> int:
        try:
            return anyio.run(command, args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except Exception as exc:  # task groups wrap errors: report the one that matters
            leaf = leaf_error(exc)
            if isinstance(leaf, BrokenPipeError):
                return EXIT_FAILED
            if not isinstance(leaf, CommandError | StoreError | NixCompatError | OSError):
                raise
            print(f"tvixctl: error: {leaf}", file=sys.stderr)
            return EXIT_FAILED

    return run
