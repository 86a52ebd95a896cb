"""The ``tvixctl store …`` command line (the commands are in :mod:`clients.tvixctl.store`).

Kept apart so that building the parser — every ``tvixctl`` run does — loads
none of the store client (gRPC store services, ingest, NAR): that module is
imported when a ``store`` command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from clients.errors import StoreError
from clients.tvixctl.common import CommandError, default_socket
from nixcompat.errors import NixCompatError

if TYPE_CHECKING:
    from clients.tvixctl.store import Command

__all__ = ["register"]

_EXAMPLES = """\
examples:
  tvixctl store import ./src --name my-src     # prints /nix/store/<hash>-my-src
  tvixctl store ls /nix/store/<hash>-my-src/lib
  tvixctl store cat /nix/store/<hash>-my-src/README
  tvixctl store path-info --json /nix/store/<hash>-my-src
  tvixctl store nar /nix/store/<hash>-my-src > my-src.nar
  tvixctl store export /nix/store/<hash>-my-src ./copy
  tvixctl store verify

Start a store server for these commands with:
  python -m tvixd.store.serve --listen unix:/run/tvixd/tvixd.sock \\
      --blob-service objectstore+file:///var/lib/tvixd/blobs \\
      --directory-service sqlite:///var/lib/tvixd/store.db \\
      --path-info-service sqlite:///var/lib/tvixd/store.db
"""


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    """Run ``clients.tvixctl.store.<name>`` (imported now: other commands never load it)."""

    def run(args: argparse.Namespace) -> int:
        from clients.tvixctl import store

        command: Command = getattr(store, name)

        async def go() -> int:
            async with store.connect(args.socket) as connected:
                return await command(connected, args)

        try:
            return anyio.run(go)
        except Exception as exc:  # task groups wrap errors: report the one that matters
            leaf = _leaf(exc)
            if isinstance(leaf, BrokenPipeError):
                return 1
            if not isinstance(leaf, CommandError | StoreError | NixCompatError | OSError):
                raise
            print(f"tvixctl: error: {leaf}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def register(groups: Any) -> None:
    """Add ``store`` and its subcommands to the top-level subparsers ``groups``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        default=default_socket(),
        help="the daemon's (or store server's) unix socket (default: $TVIXD_SOCKET or "
        "tvixd's default, here %(default)s)",
    )
    raw = argparse.RawDescriptionHelpFormatter
    parser = groups.add_parser(
        "store",
        help="import, inspect, export and verify store paths",
        description="Store paths in a tvixd store, over its unix socket.",
        epilog=_EXAMPLES,
        formatter_class=raw,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, command: str, help: str, epilog: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name,
            parents=[common],
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog="example:\n  " + epilog,
            formatter_class=raw,
        )
        sub.set_defaults(run=_runner(command))
        return sub

    sub = add(
        "import",
        "cmd_import",
        "add a file or directory like 'nix-store --add' and print its store path",
        "tvixctl store import ./src --name my-src",
    )
    sub.add_argument("path", help="the file, directory or symlink to add")
    sub.add_argument("--name", help="the store path name (default: the path's base name)")

    sub = add(
        "export",
        "cmd_export",
        "write a store path (or something inside it) to DEST, which must not exist",
        "tvixctl store export /nix/store/<hash>-my-src ./copy",
    )
    sub.add_argument("store_path", metavar="STORE_PATH[/sub]")
    sub.add_argument("dest", metavar="DEST")

    sub = add(
        "ls",
        "cmd_ls",
        "list a directory in a store path: type and mode, size, name, symlink target",
        "tvixctl store ls /nix/store/<hash>-my-src/lib",
    )
    sub.add_argument("store_path", metavar="STORE_PATH[/sub]")

    sub = add(
        "cat",
        "cmd_cat",
        "write a regular file in a store path to stdout",
        "tvixctl store cat /nix/store/<hash>-my-src/README",
    )
    sub.add_argument("store_path", metavar="STORE_PATH/file")

    sub = add(
        "path-info",
        "cmd_path_info",
        "show a store path's NarHash, NarSize, References, Deriver, Sigs and CA",
        "tvixctl store path-info --json /nix/store/<hash>-my-src",
    )
    sub.add_argument("store_path", metavar="STORE_PATH")
    sub.add_argument("--json", action="store_true", help="like 'nix path-info --json'")

    sub = add(
        "nar",
        "cmd_nar",
        "write the NAR of a store path to stdout (like 'nix-store --dump')",
        "tvixctl store nar /nix/store/<hash>-my-src > my-src.nar",
    )
    sub.add_argument("store_path", metavar="STORE_PATH[/sub]")

    sub = add(
        "verify",
        "cmd_verify",
        "check every path: references present, every directory and blob present and intact, "
        "NAR hash and size as recorded; exits 1 on any problem",
        "tvixctl store verify --verbose",
    )
    sub.add_argument("--verbose", "-v", action="store_true", help="also list the good paths")
