"""The same derivations built by real Nix (sandbox on) and by our OCI builder.

``derivations.nix`` is instantiated once with a per-session salt (so Nix
really builds, in its sandbox, instead of reusing old outputs) and realised
with ``nix-store --realise --option sandbox true``.  Each ``.drv`` Nix wrote
is then parsed, translated and built by our builder in dependency order.
Every output must have the same contents (files, executable bits,
symlinks, nested directories — compared as trees, and by NAR hash) and the
same references as Nix's.  Known, documented differences are kept out of
the outputs: ``NIX_BUILD_TOP`` (upstream's ``/``), ``NIX_BUILD_CORES``, and
``NIX_ATTRS_*_FILE`` (Nix 2.8 points them at the host's temporary directory).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from clients.castore.model import Node
from clients.store.ingest import export_node
from clients.store.nar import CastoreNarCalculator
from nixcompat.derivation import Derivation
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import NarDirectory, NarRegular, NarSymlink, nar_hash_node, nar_hash_path
from nixcompat.storepath import StorePath
from tests.build.helpers import Store
from tests.conftest import require_tool
from tvixd.build.oci.service import OciBuildService

pytestmark = [pytest.mark.nix, pytest.mark.runc]

NIX_FILE = Path(__file__).parent / "derivations.nix"
ATTRS = [
    "tree", "flat", "terminal", "executable", "symlinkOutput", "multi", "dependent", "passAsFile",
    "placeholders", "structured", "environment", "fixedFlat", "fixedRecursive",
]  # fmt: skip


def recursive_fixed_hash() -> str:
    """The NAR hash (SRI) of what ``fixedRecursive`` builds: ``f`` = "x\\n", ``l`` -> f."""
    tree = NarDirectory.of({"f": NarRegular.from_bytes(b"x\n"), "l": NarSymlink(b"f")})
    digest, _ = nar_hash_node(tree)
    return NixHash(HashAlgo.sha256, digest).to_sri()


@dataclass(frozen=True)
class NixBuilt:
    """What Nix built: the derivations (by attribute) and each output's references."""

    drvs: dict[str, tuple[StorePath, Derivation]]
    references: dict[StorePath, frozenset[StorePath]]


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def nix_built(busybox_tree: Path) -> Iterator[NixBuilt]:
    require_tool("nix-instantiate")
    salt = os.urandom(8).hex()
    attr_flags = [x for attr in ATTRS for x in ("-A", attr)]
    drv_paths = _run(
        "nix-instantiate", str(NIX_FILE), "--arg", "busyboxDir", str(busybox_tree),
        "--argstr", "salt", salt, "--argstr", "recursiveHash", recursive_fixed_hash(),
        *attr_flags,
    ).split()  # fmt: skip
    assert len(drv_paths) == len(ATTRS)
    _run(
        "nix-store", "--realise", "--option", "sandbox", "true", "--option", "substituters", "",
        *drv_paths,
    )  # fmt: skip
    drvs = {
        attr: (StorePath.from_absolute_path(path), Derivation.from_aterm(Path(path).read_bytes()))
        for attr, path in zip(ATTRS, drv_paths, strict=True)
    }
    outputs = [out.path for _, drv in drvs.values() for out in drv.outputs.values()]
    references = {}
    for path in outputs:
        refs = _run("nix-store", "--query", "--references", path).split()
        references[StorePath.from_absolute_path(path)] = frozenset(
            StorePath.from_absolute_path(r) for r in refs
        )
    yield NixBuilt(drvs, references)
    subprocess.run(
        ["nix-store", "--delete", *outputs, *drv_paths], capture_output=True, check=False
    )


def listing(root: Path) -> dict[str, tuple[str, ...]]:
    """Every entry below ``root`` as NAR sees it: type, executable bit, contents or target."""
    out: dict[str, tuple[str, ...]] = {}

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            shown = data.decode("utf-8", "backslashreplace")
            out[rel] = (
                "file",
                "x" if st.st_mode & stat.S_IXUSR else "-",
                shown[:2000],
                str(len(data)),
            )
        else:
            out[rel] = ("directory",)
            for name in sorted(os.listdir(path)):
                visit(path / name, f"{rel}/{name}")

    visit(root, "")
    return out


def _order(drvs: dict[str, tuple[StorePath, Derivation]]) -> list[str]:
    """Attributes with every input derivation before its dependants."""
    by_path = {str(path): attr for attr, (path, _) in drvs.items()}
    done: list[str] = []

    def visit(attr: str) -> None:
        if attr not in done:
            for dep in drvs[attr][1].input_derivations:
                visit(by_path[dep])
            done.append(attr)

    for attr in drvs:
        visit(attr)
    return done


@pytest.mark.asyncio
@pytest.mark.slow
async def test_outputs_and_references_match_nix(
    nix_built: NixBuilt, builder: OciBuildService, store: Store, tmp_path: Path
) -> None:
    calculator = CastoreNarCalculator(store.blobs, store.directories)
    mismatches: dict[str, object] = {}
    for attr in _order(nix_built.drvs):
        drv_path, drv = nix_built.drvs[attr]
        await store.build(builder, drv)
        for name, output in sorted(drv.outputs.items()):
            path = StorePath.from_absolute_path(output.path)
            node: Node = store.nodes[path]
            where = f"{attr}.{name}"
            ours_dir = tmp_path / "ours" / path.basename
            await anyio.Path(ours_dir.parent).mkdir(parents=True, exist_ok=True)
            await export_node(node, store.blobs, store.directories, ours_dir)
            ours, theirs = await anyio.to_thread.run_sync(
                lambda: (listing(ours_dir), listing(Path(output.path)))  # noqa: B023
            )
            if ours != theirs:
                diff = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()
                        if ours.get(k) != theirs.get(k)}  # fmt: skip
                mismatches[where + " contents (ours, nix)"] = diff
            nar_size, nar_sha256 = await calculator.calculate_nar(node)
            nix_sha256, nix_size = await anyio.to_thread.run_sync(nar_hash_path, output.path)
            if (nar_size, nar_sha256) != (nix_size, nix_sha256):
                mismatches[where + " NAR hash"] = (nar_sha256.hex(), nix_sha256.hex())
            if store.references[path] != nix_built.references[path]:
                mismatches[where + " references (ours, nix)"] = (
                    sorted(map(str, store.references[path])),
                    sorted(map(str, nix_built.references[path])),
                )
        del drv_path
    assert mismatches == {}
