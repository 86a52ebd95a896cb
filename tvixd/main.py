"""The ``tvixd`` command."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tvixd", description="the tvixd build coordinator daemon")
    parser.add_argument("--version", action="version", version=f"tvixd {version('tvixd')}")
    parser.parse_args(argv)
    print("tvixd: the daemon is not implemented yet (see the open issues)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
