"""``./dev demo``: build examples/demo.nix through the daemon with the embedded backends."""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "tvixd demo: not yet - the daemon, builder and tvixctl build are still to come "
        "(the foundation, Nix formats and state machines are in place; ./dev test runs them)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
