"""From a Build's needle indexes back to Nix references, per output.

The builder only reports which refscan needles it found in each output;
which store path a needle stands for is known to whoever translated the
derivation (:func:`~tvixd.build.translate.refscan_candidates`).  Nix's
reference set of an output is then: the candidates found, minus ``.drv``
paths (upstream's needle list names input derivations by their ``.drv``
path, which Nix never records as a reference of a build output).

Like Nix, :func:`output_references` rejects a cycle between the outputs of
one derivation (``out`` refers to ``dev`` and ``dev`` to ``out``); a
self-reference is fine.
"""

from __future__ import annotations

from collections.abc import Iterable

from clients.build.errors import BuildFailed
from clients.build.model import Build
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath
from tvixd.build.translate import refscan_candidates

__all__ = ["output_references"]


def output_references(
    drv: Derivation,
    inputs: Iterable[StorePath | str],
    build: Build,
    *,
    upstream_needles: bool = False,
) -> dict[str, frozenset[StorePath]]:
    """Output name → the store paths it references (``inputs`` and flag as given to the translation).

    Raises :class:`BuildFailed` (exit code 0) when the outputs reference each
    other in a cycle, with Nix's message.
    """
    candidates = refscan_candidates(drv, inputs, upstream_needles=upstream_needles)
    if len(candidates) != len(build.request.refscan_needles) or any(
        c.hash_part != n for c, n in zip(candidates, build.request.refscan_needles, strict=True)
    ):
        raise ValueError("the Build's needles are not those of this derivation and inputs")
    by_path = {out.path[1:]: name for name, out in drv.outputs.items()}
    refs: dict[str, frozenset[StorePath]] = {}
    for output, found in zip(build.request.outputs, build.outputs_needles, strict=True):
        refs[by_path[output]] = frozenset(
            candidates[i] for i in found if not candidates[i].is_derivation
        )
    _check_cycles(drv, refs)
    return refs


def _check_cycles(drv: Derivation, refs: dict[str, frozenset[StorePath]]) -> None:
    name_of = {StorePath.from_absolute_path(out.path): name for name, out in drv.outputs.items()}
    edges = {
        name: sorted(name_of[p] for p in found if p in name_of and name_of[p] != name)
        for name, found in refs.items()
    }
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str, parent: str | None) -> None:
        if name in done:
            return
        if name in path:
            raise BuildFailed(
                f"cycle detected in build of '{drv.drv_path()}' in the references of output "
                f"'{name}' from output '{parent}'",
                exit_code=0,
            )
        path.append(name)
        for child in edges[name]:
            visit(child, name)
        path.pop()
        done.add(name)

    for name in sorted(edges):
        visit(name, None)
