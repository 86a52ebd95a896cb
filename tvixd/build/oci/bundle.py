"""One OCI bundle per build: the runtime config (config.json) and the directories it mounts.

Layout of a bundle directory (everything root-owned unless said otherwise)::

    config.json
    root/                    the container's root file system: empty, read-only;
                             mountpoints, /etc/{passwd,group,hosts} — or, when
                             nothing of the request goes there (the usual
                             case), ../root-<key>/, one shared by every alike
                             request and kept (see :func:`~tvixd.build.oci.rootfs.shared_root_name`)
    scratch/<i>-<name>/      one writable directory per scratch path, owned by
                             the build user; the inputs dir (root:<gid>, 1775,
                             holding the input closure as a hardlink farm) is
                             a recycled store directory outside the bundle
                             (:mod:`~tvixd.build.oci.storedirs`) when given

The sandbox (:func:`make_spec`): new mount, pid, ipc, uts and cgroup
namespaces, and a network namespace (only loopback) unless
``network_access``; ``/proc``, a minimal ``/dev`` (tmpfs with runc's default
devices, ``pts``, ``shm``, ``mqueue``), a private ``/tmp``; each scratch path
bind-mounted read-write; the inputs inside the inputs dir, each either
*linked* (:mod:`~tvixd.build.oci.farm`: recreated from the input cache with
hard-linked, read-only, root-owned files; no mount at all) or bind-mounted
read-only at ``<inputs_dir>/<name>``; symlink inputs are created as
symlinks; ``available_ro_paths`` and ``/bin/sh`` read-only; with network
access ``/etc/{resolv.conf,services,hosts}`` of the host.
The process runs as ``uid:gid`` (not root) with no capabilities,
``noNewPrivileges``, ``RLIMIT_NOFILE`` and ``RLIMIT_CORE=0``; runc's default
masked and read-only kernel paths; a pids limit.  Nothing else of the host
is visible.  No seccomp filter (Nix's forbids setuid bits; here outputs lose
every mode bit but the executable one anyway).

:func:`prepare_bundle` does the file-system work (blocking: call it on a
worker thread).  Environment values must be UTF-8 (config.json is JSON).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.build.model import BuildRequest
from clients.castore.model import SymlinkNode
from clients.errors import InvalidRequest
from tvixd.build.oci.farm import Tree
from tvixd.build.oci.rootfs import (
    etc_files,
    make_root,
    make_shared_root,
    mkdirs,
    shared_root_name,
)
from tvixd.build.oci.storedirs import Entry, StoreDir, fill

__all__ = [
    "Bundle",
    "SandboxConfig",
    "make_spec",
    "prepare_bundle",
    "scratch_dir_name",
    "store_entries",
]

_MASKED = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)  # fmt: skip
_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_HOST_NETWORK_FILES = ("/etc/resolv.conf", "/etc/services", "/etc/hosts")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class SandboxConfig:
    """Builder-wide sandbox settings."""

    uid: int = 1000
    gid: int = 100
    sandbox_shell: str | None = "/bin/busybox"
    nofile: int = 1024
    pids_limit: int = 8192
    shm_size: str = "64m"
    tmp_size: str = "50%"


@dataclass(frozen=True)
class Bundle:
    """A prepared bundle: where each scratch path lives on the host."""

    dir: Path
    scratch: Mapping[str, Path] = field(default_factory=dict)
    shared_root: Path | None = None

    @property
    def root(self) -> Path:
        """The root file system: ``root/`` in the bundle, or one shared by alike requests."""
        return self.shared_root if self.shared_root is not None else self.dir / "root"

    def host_path(self, path: str) -> Path:
        """Where the container's relative ``path`` lives on the host (deepest scratch path wins)."""
        best = ""
        for scratch in self.scratch:
            if (path == scratch or path.startswith(scratch + "/")) and len(scratch) > len(best):
                best = scratch
        if not best:
            return self.root / path
        rest = path[len(best) + 1 :]
        return self.scratch[best] / rest if rest else self.scratch[best]

    def in_scratch(self, path: str) -> bool:
        """Whether ``path`` is a scratch path or inside one (writable during the build)."""
        return any(path == s or path.startswith(s + "/") for s in self.scratch)


def scratch_dir_name(index: int, path: str) -> str:
    """A unique, readable directory name for scratch path number ``index``."""
    return f"{index}-{_NOT_NAME.sub('_', path.replace('/', '-'))}"[:100]


def _mount(dest: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": kind, "source": source, "options": options}


def _env(request: BuildRequest) -> list[str]:
    out = []
    for e in request.environment_vars:
        try:
            out.append(f"{e.key}={e.value.decode('utf-8')}")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"environment variable {e.key!r} has a value that is not UTF-8 "
                f"({e.value[:60]!r}); the OCI runtime config cannot carry it"
            ) from exc
    return out


def make_spec(
    request: BuildRequest,
    bundle: Bundle,
    inputs: Mapping[bytes, Path],
    config: SandboxConfig,
) -> dict[str, Any]:
    """The OCI runtime config for ``request`` (no I/O).

    ``inputs`` maps each bind-mounted input's name to its materialized host path.
    """
    c = request.constraints
    mounts = [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        _mount("/dev/shm", "tmpfs", "shm",
               ["nosuid", "noexec", "nodev", "mode=1777", f"size={config.shm_size}"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777", f"size={config.tmp_size}"]),
    ]  # fmt: skip
    for path in sorted(bundle.scratch):
        mounts.append(
            _mount(
                "/" + path, "bind", str(bundle.scratch[path]), ["rbind", "rw", "nosuid", "nodev"]
            )
        )
    inputs_dir = "/" + request.inputs_dir if request.inputs_dir else ""
    for name, source in sorted(inputs.items()):
        dest = f"{inputs_dir}/{name.decode()}"
        mounts.append(_mount(dest, "bind", str(source), ["bind", "ro", "nosuid", "nodev"]))
    for path in c.available_ro_paths:
        mounts.append(_mount(path, "bind", path, ["rbind", "ro", "nosuid", "nodev"]))
    if c.provide_bin_sh:
        if config.sandbox_shell is None:
            raise InvalidRequest("this builder has no sandbox shell configured for /bin/sh")
        mounts.append(_mount("/bin/sh", "bind", config.sandbox_shell, ["bind", "ro", "nosuid"]))
    if c.network_access:
        for path in _HOST_NETWORK_FILES:
            if os.path.exists(path):
                mounts.append(_mount(path, "bind", path, ["bind", "ro", "nosuid", "nodev"]))
    namespaces = ["pid", "ipc", "uts", "mount", "cgroup"]
    if not c.network_access:
        namespaces.append("network")
    no_caps: dict[str, list[str]] = {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": config.uid, "gid": config.gid},
            "args": list(request.command_args),
            "env": _env(request),
            "cwd": "/" + request.working_dir,
            "capabilities": no_caps,
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": config.nofile, "soft": config.nofile},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": str(bundle.root), "readonly": True},
        "hostname": "localhost",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in namespaces],
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "pids": {"limit": config.pids_limit},
            },
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }


def store_entries(
    request: BuildRequest, inputs: Mapping[bytes, Tree], mount: Set[bytes] = frozenset()
) -> dict[bytes, Entry]:
    """What the inputs dir of ``request`` must hold (see :mod:`~tvixd.build.oci.storedirs`).

    ``inputs`` maps each non-symlink input's name to its checked cache
    entry; the names in ``mount`` get a mountpoint, the others are linked.
    """
    wanted: dict[bytes, Entry] = {}
    for node in request.inputs:
        if isinstance(node, SymlinkNode):
            wanted[node.name] = ("symlink", node.target, 1)
            continue
        tree = inputs[node.name]
        if node.name not in mount:
            wanted[node.name] = ("link", tree.root, tree.size)
        else:
            wanted[node.name] = ("mount-dir" if tree.dirs else "mount-file", tree.root, 1)
    return wanted


def prepare_bundle(
    request: BuildRequest,
    bundle_dir: Path,
    inputs: Mapping[bytes, Tree],
    config: SandboxConfig,
    *,
    mount: Set[bytes] = frozenset(),
    store: StoreDir | None = None,
    entries: Mapping[bytes, Entry] | None = None,
) -> Bundle:
    """Create the bundle directory for ``request`` (blocking; ``bundle_dir`` must not exist).

    ``inputs`` maps each non-symlink input's name to its checked cache
    entry; the names in ``mount`` are bind-mounted, the others linked into
    the inputs dir (the cache must be on the bundle's file system); symlink
    inputs are created directly.  ``store``, when the inputs dir is a
    scratch path, is the (recycled) directory to use as the inputs dir: it
    is filled (:func:`~tvixd.build.oci.storedirs.fill`) to hold exactly the
    inputs; otherwise a fresh one is made inside the bundle.  ``entries``
    is :func:`store_entries` of the same arguments, if the caller has it.
    Writes config.json last.
    """
    if entries is None:
        entries = store_entries(request, inputs, mount)
    bundle_dir.mkdir(mode=0o700)
    shared = shared_root_name(request, config)
    if shared is None:
        root = bundle_dir / "root"
        make_root(root, request, config)
    else:
        root = bundle_dir.parent / shared
        if not root.is_dir():
            make_shared_root(root, request, config)
    use_store = store is not None and request.inputs_dir in request.scratch_paths
    scratch = {
        path: (
            Path(os.fsdecode(store.path))
            if store is not None and use_store and path == request.inputs_dir
            else bundle_dir / "scratch" / scratch_dir_name(i, path)
        )
        for i, path in enumerate(request.scratch_paths)
    }
    bundle = Bundle(bundle_dir, scratch, root if shared is not None else None)
    (bundle_dir / "scratch").mkdir(mode=0o700)
    for path, host in scratch.items():
        if path == request.inputs_dir:  # like Nix's store dir: the build adds, cannot remove inputs
            continue  # fill() creates it
        host.mkdir()
        os.chown(host, config.uid, config.gid)
        os.chmod(host, 0o700)
    user = (config.uid, config.gid)
    if request.inputs_dir in scratch:
        if store is None or not use_store:
            store = StoreDir(bytes(scratch[request.inputs_dir]))
        fill(store, entries, inputs, config.gid)
    # the inputs (symlinks among them) exist now: an additional file must not escape through
    # one (the service refuses paths inside an input; this checks where each one really lands)
    inside = [str(bundle_dir) + "/"] + [str(h) + "/" for h in scratch.values()]
    for f in request.additional_files:
        host = bundle.host_path(f.path)
        mkdirs(host.parent, root, user if bundle.in_scratch(f.path) else None)
        real = os.path.realpath(host.parent) + "/"
        if not any(real.startswith(prefix) for prefix in inside):
            raise InvalidRequest(f"additional file {f.path!r} would be outside the bundle")
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as out:
            out.write(f.contents)
        os.chown(host, *user)
    if request.working_dir and bundle.in_scratch(request.working_dir):
        mkdirs(bundle.host_path(request.working_dir), root, user)
    if shared is None:
        for name, text in etc_files(config, request.constraints.network_access).items():
            if not (root / "etc" / name).exists():  # an additional file may provide it
                (root / "etc" / name).write_text(text)
    if request.inputs_dir not in scratch:  # inputs inside the read-only root: made fresh
        inputs_host = bundle.host_path(request.inputs_dir) if request.inputs_dir else root
        mkdirs(inputs_host, root)
        fill(StoreDir(bytes(inputs_host), exact=True), entries, inputs, config.gid)
    mounted = {
        node.name: Path(os.fsdecode(inputs[node.name].root))
        for node in request.inputs
        if node.name in mount and not isinstance(node, SymlinkNode)
    }
    spec = make_spec(request, bundle, mounted, config)
    (bundle_dir / "config.json").write_text(json.dumps(spec, separators=(",", ":")))
    return bundle
