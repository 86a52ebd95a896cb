"""The ``tvixctl`` command."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tvixctl", description="talk to a tvixd daemon")
    parser.add_argument("--version", action="version", version=f"tvixctl {version('tvixd')}")
    parser.parse_args(argv)
    print("tvixctl: no commands yet (see the open issues)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
