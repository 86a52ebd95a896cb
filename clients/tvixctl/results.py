"""``tvixctl build -o PATH``: a job's outputs written out as real files (our store is not mounted).

Names follow ``nix-build``'s result links: the first derivation's ``out`` is
``PATH``, its other outputs ``PATH-<output>``; the *n*-th derivation (n ≥ 2)
gets ``PATH-<n>`` and ``PATH-<n>-<output>``.

Each output is exported into a temporary name next to its destination and
then renamed into place; its top-level modification time is set to 1 (as in
``/nix/store``).  An existing destination is replaced only when it is such an
earlier result (mtime 1 — changed since, it is not); anything else is an
error, so no user file is ever deleted.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from clients.tvixctl.common import CommandError

__all__ = ["ResultLink", "check_destination", "export_results", "plan_results"]

RESULT_MTIME = 1


@dataclass(frozen=True)
class ResultLink:
    """One output to write: where, and which store path."""

    dest: Path
    store_path: str


def plan_results(base: Path, outputs: Sequence[Any]) -> list[ResultLink]:
    """Where each of a job's ``JobOutput``s goes (see the module docstring)."""
    order: list[str] = []
    for output in outputs:
        if output.drv_path not in order:
            order.append(output.drv_path)
    links = []
    for output in outputs:
        index = order.index(output.drv_path) + 1
        name = base.name if index == 1 else f"{base.name}-{index}"
        if output.output_name != "out":
            name += f"-{output.output_name}"
        links.append(ResultLink(base.with_name(name), output.path))
    return links


def _is_earlier_result(path: Path) -> bool:
    return os.lstat(path).st_mtime == RESULT_MTIME


def check_destination(dest: Path) -> None:
    """``CommandError`` unless ``dest`` can be written: its directory exists, and ``dest`` is free
    or an earlier result."""
    if not dest.parent.is_dir():
        raise CommandError(f"cannot write the result to {dest}: {dest.parent} is not a directory")
    if os.path.lexists(dest) and not _is_earlier_result(dest):
        raise CommandError(
            f"{dest} already exists and is not an earlier tvixctl result; "
            "remove it or choose another -o PATH"
        )


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _put_in_place(tmp: Path, dest: Path) -> None:
    check_destination(dest)
    _remove(dest)
    os.rename(tmp, dest)
    os.utime(dest, (RESULT_MTIME, RESULT_MTIME), follow_symlinks=False)


async def export_results(socket: str, links: Sequence[ResultLink]) -> None:
    """Write every link's store path (from the daemon at ``socket``) to its destination."""
    # the store client loads only when there are results to write (a build's own start-up)
    from clients.store.ingest import export_node
    from clients.tvixctl.store import connect, resolve

    async with connect(socket) as store:
        for link in links:
            await anyio.to_thread.run_sync(check_destination, link.dest)
            _, node, _ = await resolve(store, link.store_path)
            tmp = link.dest.with_name(f".{link.dest.name}.tmp-{secrets.token_hex(4)}")
            try:
                await export_node(node, store.blobs, store.directories, tmp)
                await anyio.to_thread.run_sync(_put_in_place, tmp, link.dest)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove, tmp)
