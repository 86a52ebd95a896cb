"""Fixtures: one tvixd (dummy builder, persistent default backends) shared by a module's tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.tvixctl.helpers import GRAPH_NIX, Daemon, running_tvixd


@dataclass
class Served:
    """The shared daemon and a Nix file of derivations for the dummy builder."""

    daemon: Daemon
    nix_file: Path
    salts: Iterator[int]

    @property
    def socket(self) -> str:
        return str(self.daemon.socket)

    def salt(self) -> str:
        """A fresh salt: derivations no other test has built."""
        return f"salt-{next(self.salts)}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_tool("nix-instantiate")
    base = tmp_path_factory.mktemp("tvixctl")
    nix_file = base / "graph.nix"
    nix_file.write_text(GRAPH_NIX)
    with running_tvixd(
        base / "tvixd.sock", base / "state", build_service="dummy://?delay=0.2"
    ) as d:
        yield Served(d, nix_file, itertools.count())
