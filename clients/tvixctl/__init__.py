"""The ``tvixctl`` command: talk to a tvixd daemon or store server over gRPC.

``clients.tvixctl:main`` is the entry point.  Command groups live in their
own modules and register themselves with :func:`main`'s parser:

* ``tvixctl store …`` — :mod:`clients.tvixctl.store` (import, export, ls, cat,
  path-info, nar, verify).

Exit codes: 0 success, 1 the operation failed (message on stderr), 2 bad
usage.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from clients.tvixctl import store


def _version() -> str:
    try:
        return version("tvixd")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="tvixctl",
        description="Talk to a tvixd daemon or store server over its unix socket.",
        epilog="examples:\n"
        "  tvixctl store import ./src --name my-src\n"
        "  tvixctl store ls /nix/store/<hash>-my-src\n"
        "  tvixctl store verify\n\n"
        "Run 'tvixctl store --help' for the store commands.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tvixctl {_version()}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    store.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
