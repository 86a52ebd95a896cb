"""The OCI builder: BuildRequests run in runc containers, outputs ingested into the castore.

Per build (at most ``max_builds`` containers at a time, default: the number
of cores; like Nix's ``max-jobs``, a slot is held from step 3 until the
builder exits, so materializing inputs before and collecting outputs after
do not hold one):

1. check the request against this builder (system, read-only host paths it
   allows, a sandbox shell for ``/bin/sh``, outputs inside scratch paths);
2. materialize the inputs (:class:`~tvixd.build.oci.materialize.InputCache`:
   once per builder, shared read-only);
3. prepare a bundle (:mod:`~tvixd.build.oci.bundle`) under
   ``<state>/builds/<id>``, its store directory (a recycled one:
   :mod:`~tvixd.build.oci.storedirs`) holding the input closure as
   a hardlink farm of the cache (:mod:`~tvixd.build.oci.farm`; inputs with
   more than ``link_limit`` entries, or all of them when the cache is on
   another file system than ``builds/``, are bind-mounted read-only
   instead), and run it (:mod:`~tvixd.build.oci.runner`), streaming log
   lines, within ``timeout`` seconds;
4. once the builder exited (the shim deletes the container meanwhile), check: a zero exit, every output present, for a fixed output the declared
   hash (Nix's mismatch message, both hashes), no references from a fixed
   output; scan every output for the refscan needles;
5. only then ingest the outputs into the castore and return the Build.

A failure at step 1 is ``InvalidRequest``; at steps 3 and 4 ``BuildFailed`` with the log
tail.  Whatever happens (cancellation included), the container is killed,
the bundle removed and the store directory swept (everything the build
created in it removed), shielded and bounded; a failed build puts nothing
into the castore.  State directory layout: ``builds/`` (bundles, recycled
store directories, shared root file systems), ``inputs/``
(materialized inputs), ``runc-root`` (where runc's state is: a private
directory on a tmpfs, :mod:`~tvixd.build.oci.runcroot`; ``runc/`` here when
there is none), ``lock`` (one builder per state directory).  Opening the
builder removes what a crash left there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from clients.build.errors import BuildError, BuildFailed
from clients.build.model import Build, BuildRequest
from clients.build.protocols import LogSink
from clients.castore.model import DirectoryNode, FileNode, Node, SymlinkNode
from clients.castore.protocols import BlobService, DirectoryService
from clients.castore.streams import put_bytes
from clients.errors import InvalidRequest
from clients.store.ingest import ingest_path
from clients.store.nar import NarMemo, file_nar
from nixcompat.nar import NarError
from tvixd.build.oci.bundle import Bundle, SandboxConfig, prepare_bundle, store_entries
from tvixd.build.oci.farm import Tree, same_file_system
from tvixd.build.oci.materialize import InputCache
from tvixd.build.oci.outputs import (
    FixedOutput,
    SmallOutput,
    check_outputs,
    fixed_output_of,
    hash_mismatch,
)
from tvixd.build.oci.runcroot import close_runc_root, open_runc_root
from tvixd.build.oci.runner import CLEANUP_TIMEOUT, Runc, RunResult
from tvixd.build.oci.storedirs import StoreDir, StoreDirPool, sweep

__all__ = ["OciBuildService", "OciConfig", "default_systems"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OciConfig:
    """How an OCI builder runs builds (``oci://`` URL parameters build one).

    ``max_builds``: containers at once (None: the number of cores); ``timeout``:
    seconds per build (None: no limit); ``allowed_ro_paths``: host paths a
    request may ask for as ``available_ro_paths``; ``systems``: the systems
    built here (None: :func:`default_systems`); ``link_limit``: inputs with
    more entries (files, directories, symlinks) than this are bind-mounted
    instead of linked (None: every input is linked, 0: every one mounted).
    """

    max_builds: int | None = None
    timeout: float | None = None
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    runc: str = "runc"
    allowed_ro_paths: tuple[str, ...] = ()
    systems: tuple[str, ...] | None = None
    link_limit: int | None = None


def default_systems() -> tuple[str, ...]:
    """The Nix systems this machine runs natively (``x86_64-linux`` also runs ``i686-linux``)."""
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        return ("x86_64-linux", "i686-linux")
    if machine in ("aarch64", "arm64"):
        return ("aarch64-linux",)
    return (f"{machine}-linux",)


def _lock(path: Path) -> IO[bytes]:
    f = path.open("wb")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BuildError(f"{path.parent} is in use by another builder") from None
    return f


def _setup(state: Path) -> tuple[Path, IO[bytes], Path]:
    state = state.absolute()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock(state / "lock")
    try:
        runc_root = open_runc_root(state)
    except BaseException:
        lock.close()
        raise
    return state, lock, runc_root


def _clear_builds(builds: Path, inputs: Path) -> bool:
    """Empty ``builds``; whether the input cache can be hard-linked into it."""
    if builds.exists():
        shutil.rmtree(builds)
    builds.mkdir(mode=0o700)
    return same_file_system(builds, inputs)


class OciBuildService:
    """``BuildService`` running builds under runc; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        blobs: BlobService,
        directories: DirectoryService,
        inputs: InputCache,
        lock: IO[bytes],
        config: OciConfig,
        runc_root: Path | None = None,
    ) -> None:
        self._state = state_dir
        self._blobs = blobs
        self._directories = directories
        self._inputs = inputs
        self._lock_file: IO[bytes] | None = lock
        self.config = config
        self.max_builds = config.max_builds or os.cpu_count() or 1
        self._slots = anyio.Semaphore(self.max_builds)
        self.timeout = config.timeout
        self.sandbox = config.sandbox
        self._runc_root = runc_root or state_dir / "runc"
        self._runc = Runc(self._runc_root, runc=config.runc)
        self._allowed_ro = frozenset(config.allowed_ro_paths)
        self.systems = frozenset(default_systems() if config.systems is None else config.systems)
        self._link_limit = config.link_limit
        self._stores = StoreDirPool(state_dir / "builds")
        self.nar_memo = NarMemo()
        """The NAR size and sha256 of every output stored (an in-process push reads them here)."""

    @classmethod
    async def open(
        cls,
        state_dir: str | os.PathLike[str],
        blobs: BlobService,
        directories: DirectoryService,
        config: OciConfig | None = None,
    ) -> OciBuildService:
        """A builder over ``state_dir`` (created if needed); clears what a crash left behind."""
        state, lock, runc_root = await anyio.to_thread.run_sync(_setup, Path(state_dir))
        try:
            inputs = await InputCache.open(state / "inputs", blobs, directories)
            service = cls(state, blobs, directories, inputs, lock, config or OciConfig(), runc_root)
            stale = await service._runc.remove_all()  # before their bundles go
            linkable = await anyio.to_thread.run_sync(
                _clear_builds, state / "builds", state / "inputs"
            )
        except BaseException:
            lock.close()
            raise
        if stale:
            log.warning("removed %d containers left by a previous run: %s", len(stale), stale)
        if not linkable:
            log.warning(
                "%s and %s are on different file systems: inputs are bind-mounted, not linked",
                state / "inputs",
                state / "builds",
            )
            service._link_limit = 0
        return service

    def __repr__(self) -> str:
        return f"OciBuildService({self._state}, max_builds={self.max_builds})"

    @property
    def store_dirs(self) -> StoreDirPool:
        """The recycled store directories (:mod:`~tvixd.build.oci.storedirs`)."""
        return self._stores

    async def close(self) -> None:
        await self._runc.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close_runc_root, self._state, self._runc_root)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _check(self, request: BuildRequest) -> None:
        c = request.constraints
        if c.system not in self.systems:
            raise InvalidRequest(
                f"a {c.system!r} builder is required, this one builds {sorted(self.systems)}"
            )
        for path in c.available_ro_paths:
            if path not in self._allowed_ro:
                raise InvalidRequest(
                    f"available_ro_paths {path!r} is not allowed on this builder "
                    f"(allowed: {sorted(self._allowed_ro)})"
                )
        if c.provide_bin_sh and self.sandbox.sandbox_shell is None:
            raise InvalidRequest("/bin/sh was requested but this builder has no sandbox shell")
        scratch = request.scratch_paths
        prefix = request.inputs_dir + "/" if request.inputs_dir else ""
        inputs = set()
        for node in request.inputs:
            try:
                inputs.add(prefix + node.name.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidRequest(f"input name {node.name!r} is not UTF-8") from None
        for path in [f.path for f in request.additional_files] + [request.working_dir]:
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):  # the path and each of its parents
                i = "/".join(parts[:depth])
                if i in inputs:
                    raise InvalidRequest(f"{path!r} would be inside the read-only input {i!r}")
        for output in request.outputs:
            if not any(output.startswith(s + "/") for s in scratch):
                raise InvalidRequest(
                    f"output {output!r} is not inside a scratch path {list(scratch)}; "
                    "the build could never write it"
                )
            if output in inputs:
                raise InvalidRequest(f"output {output!r} is also an input")

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        self._check(request)
        fixed = fixed_output_of(request)
        container_id = f"tvixd-{uuid.uuid4().hex}"
        bundle_dir = self._state / "builds" / container_id
        store: StoreDir | None = None
        try:
            inputs = await self._materialize(request.inputs)
            limit = self._link_limit
            mount = frozenset(
                name for name, tree in inputs.items() if limit is not None and tree.size > limit
            )
            entries = store_entries(request, inputs, mount)
            async with AsyncExitStack() as container:
                async with self._slots:  # a slot is a running container, like Nix's max-jobs
                    if request.inputs_dir in request.scratch_paths:
                        store = self._stores.take(entries)
                    bundle = await anyio.to_thread.run_sync(
                        lambda: prepare_bundle(
                            request,
                            bundle_dir,
                            inputs,
                            self.sandbox,
                            mount=mount,
                            store=store,
                            entries=entries,
                        )
                    )
                    result = await container.enter_async_context(
                        self._runc.container(
                            bundle_dir, container_id, on_line=on_log, time_limit=self.timeout
                        )
                    )
                # the builder has exited: its outputs are collected while the shim deletes it
                return await self._collect(request, bundle, result, fixed)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                # a container that may still run keeps write access to its store directory:
                # removed whole, never handed to another build
                reuse = container_id not in self._runc.unstopped
                self._runc.unstopped.discard(container_id)
                if await anyio.to_thread.run_sync(_clean_up, bundle_dir, store, reuse):
                    assert store is not None
                    self._stores.give_back(store)

    async def _materialize(self, nodes: Iterable[Node]) -> dict[bytes, Tree]:
        trees: dict[bytes, Tree] = {}
        missing: list[DirectoryNode | FileNode] = []
        for node in nodes:
            if not isinstance(node, SymlinkNode):
                tree = self._inputs.known(node)
                if tree is None:
                    missing.append(node)
                else:
                    trees[node.name] = tree
        if not missing:
            return trees

        async def one(node: DirectoryNode | FileNode) -> None:
            trees[node.name] = await self._inputs.get(node)

        async with anyio.create_task_group() as tg:
            for node in missing:
                tg.start_soon(one, node)
        return trees

    async def _collect(
        self, request: BuildRequest, bundle: Bundle, result: RunResult, fixed: FixedOutput | None
    ) -> Build:
        tail = result.tail
        if result.timed_out:
            raise BuildFailed(f"build timed out after {self.timeout} seconds", log_tail=tail)
        if result.exit_code != 0:
            raise BuildFailed(
                f"builder failed with exit code {result.exit_code}",
                exit_code=result.exit_code,
                log_tail=tail,
            )
        hosts = [bundle.host_path(output) for output in request.outputs]

        def failed(reason: str) -> BuildFailed:
            """A failure found after the builder exited 0."""
            return BuildFailed(reason, exit_code=0, log_tail=tail)

        missing, checks = await anyio.to_thread.run_sync(
            check_outputs, [str(h) for h in hosts], request.refscan_needles, fixed
        )
        if missing is not None:
            output = request.outputs[missing]
            raise failed(f"builder succeeded but did not produce output '/{output}'")
        needles: list[tuple[int, ...]] = []
        smalls: list[SmallOutput | None] = []
        for output, host, check in zip(request.outputs, hosts, checks, strict=True):
            assert check is not None  # outputs after a refused one are never reached
            if isinstance(check, InvalidRequest):  # a flat fixed output that is not a plain file
                raise failed(str(check).replace(str(host), "/" + output)) from check
            if isinstance(check, NarError):  # a socket, fifo or device in the output
                message = str(check).replace(str(host), "/" + output)
                raise failed(f"output '/{output}' cannot be stored: {message}") from check
            found, small = check
            if fixed is not None and found.hash != fixed.hash:
                assert found.hash is not None
                raise failed(hash_mismatch("/" + output, fixed.hash, found.hash))
            if fixed is not None and found.needles:
                names = sorted(request.refscan_needles[i] for i in found.needles)
                raise failed(
                    f"illegal path references in fixed-output derivation '/{output}': {names}"
                )
            needles.append(tuple(sorted(found.needles)))
            smalls.append(small)
        nodes = []
        for output, host, small in zip(request.outputs, hosts, smalls, strict=True):
            try:
                nodes.append(await self._ingest(host, output.rsplit("/", 1)[-1].encode(), small))
            except (OSError, NarError) as exc:  # the checks above read it: this is not the build
                raise BuildError(f"could not ingest output '/{output}': {exc}") from exc
        return Build(request, tuple(nodes), tuple(needles))

    async def _ingest(self, host: Path, name: bytes, small: SmallOutput | None) -> Node:
        """Put the output at ``host`` (``small`` if it was read whole) into the castore; its root
        node, called ``name``."""
        if small is None:
            ingested = await ingest_path(host, self._blobs, self._directories, name=name)
            self.nar_memo.put(ingested.node, ingested.nar_size, ingested.nar_sha256)
            return ingested.node
        if small.target is not None:
            return SymlinkNode(name, small.target)
        assert small.contents is not None
        digest = await put_bytes(self._blobs, small.contents)
        node = FileNode(name, digest, len(small.contents), small.executable)
        nar = await anyio.to_thread.run_sync(file_nar, small.contents, small.executable)
        self.nar_memo.put(node, *nar)
        return node


def _clean_up(bundle_dir: Path, store: StoreDir | None, reuse: bool = True) -> bool:
    """Remove the bundle and sweep ``store`` (blocking); whether ``store`` can be used again.

    A store directory that cannot be swept, or is not to be reused, is removed whole.
    """
    _remove_tree(bundle_dir)
    if store is None:
        return False
    if not reuse:
        log.warning(
            "removing store directory %s of a container not known to be gone",
            os.fsdecode(store.path),
        )
        _remove_tree(Path(os.fsdecode(store.path)))
        return False
    try:
        sweep(store)
    except OSError:
        log.warning("removing store directory %s", os.fsdecode(store.path), exc_info=True)
        _remove_tree(Path(os.fsdecode(store.path)))
        return False
    return True


def _remove_tree(path: Path) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
