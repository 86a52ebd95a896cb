"""The evaluator interface: Nix code in, derivations (and their input sources) out.

An evaluator turns a job's request — a Nix file with attribute paths and
arguments — into *roots*: the ``.drv`` store paths to realise and which of
their outputs are wanted.  It also reads derivations from the local store and
makes the input sources evaluation created (``builtins.toFile``, ``./path``,
``builtins.path``) available in our castore, so a builder can mount them.

Errors the user caused (a Nix syntax error, a missing attribute, ``throw``, a
missing or malformed ``.drv``, a source missing from the local store) raise
:class:`EvaluationError` or a subclass; its ``message`` is what the user sees
(for evaluation failures: Nix's own error output, verbatim).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clients.store.model import PathInfo
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath

__all__ = [
    "DerivationFileError",
    "EvalRequest",
    "EvaluatedRoot",
    "EvaluationError",
    "Evaluator",
    "NixArg",
    "SourceError",
]


@dataclass(frozen=True)
class NixArg:
    """An argument for the file's top-level function: ``--argstr`` when ``is_string`` else ``--arg``.

    With ``is_string`` the value is passed as a string; otherwise it is a Nix
    expression (``--arg n '{ a = 1; }'``).
    """

    name: str
    value: str
    is_string: bool


@dataclass(frozen=True)
class EvalRequest:
    """Evaluate ``file`` (a ``.nix`` file, or a directory with ``default.nix``).

    ``attr_paths`` are ``-A`` paths (``"pkgs.hello"``, ``"l.0"``); empty means
    the file's top-level value, which may be a derivation, or a list or an
    attribute set of derivations (taken like ``nix-build`` does).
    """

    file: Path
    attr_paths: tuple[str, ...] = ()
    args: tuple[NixArg, ...] = ()


@dataclass(frozen=True)
class EvaluatedRoot:
    """A derivation to realise: its ``.drv`` path and the output names wanted.

    ``attr_path`` is the requested attribute path that produced it (``""`` for
    the top-level value; a list or attribute set gives several roots with the
    same ``attr_path``).  ``outputs`` is the selected output (``pkg.dev`` gives
    ``("dev",)``) or, when the attribute is the derivation itself, all of its
    outputs in the ``.drv``'s order.
    """

    attr_path: str
    drv_path: StorePath
    outputs: tuple[str, ...]


class EvaluationError(Exception):
    """Evaluation failed; ``message`` is what the user sees (Nix's error output verbatim).

    ``attr_path`` is the attribute path being evaluated when it failed, when
    known (``None`` otherwise).
    """

    def __init__(self, message: str, *, attr_path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.attr_path = attr_path


class DerivationFileError(EvaluationError):
    """A ``.drv`` named by a job or an evaluation is not a path, is missing or is malformed."""


class SourceError(EvaluationError):
    """An input source cannot be made available (missing from the local store, corrupt)."""


class Evaluator(Protocol):
    """Evaluates Nix code into derivations, reads ``.drv`` files, imports input sources."""

    def evaluate(self, request: EvalRequest) -> AsyncIterator[EvaluatedRoot]:
        """The roots of ``request``, yielded as each is evaluated (not all at the end).

        Raises :class:`EvaluationError` (with Nix's message) when evaluation
        fails; roots already yielded stay valid.  Iterate to the end or close
        the iterator (``contextlib.aclosing``) in the task that iterates it.
        """
        ...

    async def read_derivation(self, drv_path: StorePath) -> Derivation:
        """The parsed ``.drv`` at ``drv_path`` in the local Nix store (cached).

        Raises :class:`DerivationFileError` when it is not a ``.drv`` path, is
        absent, or does not parse as the derivation of that path.
        """
        ...

    async def read_derivations(
        self, drv_paths: Sequence[StorePath]
    ) -> list[Derivation | DerivationFileError]:
        """:meth:`read_derivation` of each path, in one go: a result or the error, in order.

        For callers with many ``.drv`` files to read at once (the coordinator
        reads every derivation of a graph): one hand-over for all of them.
        """
        ...

    async def ensure_source(self, path: StorePath) -> PathInfo:
        """Make the input source ``path`` (in the local Nix store) available in our store.

        Idempotent: when the path-info service already has ``path``, that is
        returned.  Otherwise the path is ingested into the castore and a path
        info with Nix's references, NAR hash and size is put.  Raises
        :class:`SourceError` when the path is not valid in the local store or
        its contents do not match the hash Nix registered.
        """
        ...

    async def close(self) -> None:
        """Release resources; idempotent.  The evaluator must not be used afterwards."""
        ...
