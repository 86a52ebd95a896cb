"""A builder that runs nothing: for tests of the coordinator (``dummy://``).

It succeeds or fails on request, deterministically:

* a request whose environment has ``DUMMY_BUILD_FAIL`` fails with that value
  as the reason (exit code 1) — a derivation attribute, so tests can pick the
  failing derivations in plain Nix code; ``fail_all`` fails everything;
* otherwise each output becomes a regular file holding
  ``dummy output /<output path>\\n`` (put into the blob service when one is
  given, so the result can be pushed like a real one); no needles are found;
  each output's NAR goes into ``nar_memo`` (a :class:`NarMemo` a push in the
  same process can answer from instead of reading the blob back).

It sends one log line per build (``dummy build of /<outputs>``), and waits
``delay`` seconds first (cancellable), so tests can observe running builds.
It does not replace the OCI builder in tests that check real builds.
"""

from __future__ import annotations

import anyio

from clients.build.errors import BuildFailed
from clients.build.model import Build, BuildRequest
from clients.build.protocols import LogSink
from clients.castore.model import B3Digest, FileNode
from clients.castore.protocols import BlobService
from clients.castore.streams import put_bytes
from clients.store.nar import NarMemo

__all__ = ["FAIL_VARIABLE", "DummyBuildService"]

FAIL_VARIABLE = "DUMMY_BUILD_FAIL"


class DummyBuildService:
    """``BuildService`` that only pretends; see the module docstring."""

    def __init__(
        self,
        blobs: BlobService | None = None,
        *,
        fail_all: bool = False,
        delay: float = 0.0,
        nar_memo: NarMemo | None = None,
    ) -> None:
        self._blobs = blobs
        self.nar_memo = nar_memo if nar_memo is not None else NarMemo()
        self.fail_all = fail_all
        self.delay = delay
        self.builds = 0

    def __repr__(self) -> str:
        return f"DummyBuildService(fail_all={self.fail_all}, delay={self.delay})"

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        self.builds += 1
        if on_log is not None:
            await on_log(b"dummy build of " + " ".join("/" + o for o in request.outputs).encode())
        if self.delay:
            await anyio.sleep(self.delay)
        reason = request.env().get(FAIL_VARIABLE)
        if self.fail_all or reason is not None:
            text = reason.decode("utf-8", "replace") if reason else "fail_all is set"
            raise BuildFailed(f"dummy build failed on request: {text}", exit_code=1)
        nodes = []
        for output in request.outputs:
            data = f"dummy output /{output}\n".encode()
            if self._blobs is not None:
                digest = await put_bytes(self._blobs, data)
            else:
                digest = B3Digest.of(data)
            node = FileNode(output.rsplit("/", 1)[-1].encode(), digest, len(data))
            if self._blobs is not None:
                self.nar_memo.put_file(node, data)
            nodes.append(node)
        return Build(request, tuple(nodes), tuple(() for _ in nodes))

    async def close(self) -> None:
        pass
