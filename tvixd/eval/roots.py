"""Roots for jobs that name ``.drv`` store paths directly instead of a Nix file."""

from __future__ import annotations

from collections.abc import Iterable

from nixcompat.errors import NixCompatError
from nixcompat.storepath import StorePath
from tvixd.eval.protocol import DerivationFileError, EvaluatedRoot, Evaluator

__all__ = ["parse_drv_path", "roots_from_drv_paths"]


def parse_drv_path(value: str | StorePath) -> tuple[StorePath, str | None]:
    """``/nix/store/…drv`` or ``/nix/store/…drv!output`` as (path, output or None).

    Raises :class:`DerivationFileError` naming the value when it is not a
    ``.drv`` store path.
    """
    if isinstance(value, StorePath):
        path, output = value, None
    else:
        text, bang, selected = value.partition("!")
        try:
            path = StorePath.from_absolute_path(text)
        except NixCompatError as exc:
            raise DerivationFileError(f"{value!r} is not a derivation store path: {exc}") from exc
        if bang and not selected:
            raise DerivationFileError(f"{value!r} names an empty output after '!'")
        output = selected if bang else None
    if not path.is_derivation:
        raise DerivationFileError(
            f"{path} is not a derivation: a .drv store path is needed (did you mean its deriver?)"
        )
    return path, output


async def roots_from_drv_paths(
    evaluator: Evaluator, paths: Iterable[str | StorePath]
) -> list[EvaluatedRoot]:
    """One root per path (duplicates dropped), with all outputs or the one after ``!``.

    Each ``.drv`` is read through ``evaluator.read_derivation``, so a missing
    or malformed file raises :class:`DerivationFileError` before any work
    starts; so does a selected output the derivation does not have.  The
    roots' ``attr_path`` is ``""``.
    """
    roots: dict[EvaluatedRoot, None] = {}
    for value in paths:
        path, output = parse_drv_path(value)
        drv = await evaluator.read_derivation(path)
        if output is None:
            roots[EvaluatedRoot("", path, tuple(drv.outputs))] = None
        elif output in drv.outputs:
            roots[EvaluatedRoot("", path, (output,))] = None
        else:
            raise DerivationFileError(
                f"{path} has no output {output!r} (it has {', '.join(drv.outputs)})"
            )
    return list(roots)
