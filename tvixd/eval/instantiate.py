"""``nix-instantiate`` command lines and output, as pure functions.

``nix-instantiate FILE [-A ATTR]`` prints one line per derivation:
``/nix/store/…-name.drv``, or ``/nix/store/…-name.drv!out`` when the value is
a selected output other than ``out`` (``pkg.dev``).  Its stderr carries the
error, plus noise we drop: the warning about ``--add-root``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nixcompat.errors import NixCompatError
from nixcompat.storepath import StorePath
from tvixd.eval.protocol import EvaluationError, NixArg

__all__ = ["NOISE", "clean_stderr", "instantiate_argv", "parse_output_line"]

#: stderr lines that are not part of an error (Nix 2.8 prints this for every nix-instantiate).
NOISE = (
    "warning: you did not specify '--add-root'; the result might be removed by the garbage collector",
)


def instantiate_argv(
    nix_instantiate: str, file: Path, attr_path: str | None, args: Sequence[NixArg]
) -> list[str]:
    """The command evaluating ``file`` (``-A attr_path`` unless None) with ``args``.

    Substituters are switched off: evaluation must not download anything.
    """
    argv = [nix_instantiate, "--option", "substituters", ""]
    for arg in args:
        argv += ["--argstr" if arg.is_string else "--arg", arg.name, arg.value]
    argv.append(str(file))
    if attr_path is not None:
        argv += ["-A", attr_path]
    return argv


def parse_output_line(line: str, attr_path: str) -> tuple[StorePath, str | None]:
    """``(drv path, selected output or None)`` of one stdout line of nix-instantiate.

    Raises :class:`EvaluationError` quoting the line when it is not a ``.drv``
    store path with an optional ``!output``.
    """
    path, bang, output = line.partition("!")
    try:
        drv_path = StorePath.from_absolute_path(path)
    except NixCompatError as exc:
        raise EvaluationError(
            f"nix-instantiate printed {line[:300]!r}, which is not a store path: {exc}",
            attr_path=attr_path,
        ) from exc
    if not drv_path.is_derivation:
        raise EvaluationError(
            f"nix-instantiate printed {path!r}, which is not a .drv path", attr_path=attr_path
        )
    if bang and not output:
        raise EvaluationError(
            f"nix-instantiate printed {line!r} with an empty output name", attr_path=attr_path
        )
    return drv_path, output if bang else None


def clean_stderr(stderr: str) -> str:
    """Nix's error output without the noise lines and surrounding blank lines."""
    kept = [line for line in stderr.splitlines() if line not in NOISE]
    return "\n".join(kept).strip("\n")
