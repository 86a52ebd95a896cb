"""``tvixctl`` start-up: every run builds the whole parser, so that must stay light.

The store client (gRPC store services, ingest, NAR rendering) loads only for
the commands that need it; ``--version`` (its package lookup is slow) still
reports the installed version.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

PROBE = """
import sys
import clients.tvixctl as tvixctl
tvixctl.build_parser().parse_args(["build", "x.nix"])
heavy = ["clients.tvixctl.store", "clients.store.ingest", "clients.store.nar"]
print(" ".join(name for name in heavy if name in sys.modules))
"""


def test_building_the_parser_loads_no_store_client() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_version_is_looked_up_when_asked() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clients.tvixctl", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout == f"tvixctl {version('tvixd')}\n"
