"""Root file systems of OCI bundles: empty and read-only, mountpoints and ``/etc`` only.

A build's root holds the mountpoints of its scratch paths (and of its
working dir when outside them) and Nix's ``/etc/passwd``, ``/etc/group``
(and ``/etc/hosts`` without network); runc adds the mountpoints of
``/proc``, ``/dev``, ``/tmp``, ``/bin/sh`` and the read-only host paths
when it starts the container.  Nothing of a particular request goes there
unless an additional file or the inputs dir lies outside the scratch
paths, so alike requests share one root (:func:`shared_root_name`), made
once (:func:`make_shared_root`) and kept: no root tree is created and
removed per build, nor runc's mountpoints in it.  The container mounts it
read-only, so no build can change it.  Blocking functions: call them on a
worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from clients.build.model import BuildRequest

if TYPE_CHECKING:
    from tvixd.build.oci.bundle import SandboxConfig

__all__ = ["etc_files", "make_root", "make_shared_root", "mkdirs", "shared_root_name"]


def etc_files(config: SandboxConfig, network: bool) -> dict[str, str]:
    """What Nix's sandbox puts in /etc (passwd and group name the build user)."""
    files = {
        "passwd": (
            "root:x:0:0:Nix build user:/build:/noshell\n"
            f"nixbld:x:{config.uid}:{config.gid}:Nix build user:/build:/noshell\n"
            "nobody:x:65534:65534:Nobody:/:/noshell\n"
        ),
        "group": f"root:x:0:\nnixbld:!:{config.gid}:\nnogroup:x:65534:\n",
    }
    if network:  # the host's hosts, resolv.conf and services are bind-mounted
        files["nsswitch.conf"] = "hosts: files dns\nservices: files\n"
    else:
        files["hosts"] = "127.0.0.1 localhost\n::1 localhost\n"
    return files


def mkdirs(path: Path, stop: Path, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` and its missing parents below ``stop``: 0755, root's or ``owner``'s."""
    missing = []
    while path != stop and not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        p.mkdir(mode=0o755)
        if owner is not None:
            os.chown(p, *owner)


def make_root(root: Path, request: BuildRequest, config: SandboxConfig) -> None:
    """The root file system's skeleton: mountpoints of the scratch paths and the working dir
    (when outside them), ``/etc`` (its files: by the caller, after the additional files)."""
    root.mkdir(mode=0o755)
    for path in request.scratch_paths:
        mkdirs(root / path, root)
    scratch = request.scratch_paths
    if request.working_dir and not any(
        request.working_dir == s or request.working_dir.startswith(s + "/") for s in scratch
    ):
        mkdirs(root / request.working_dir, root)
    mkdirs(root / "etc", root)


def shared_root_name(request: BuildRequest, config: SandboxConfig) -> str | None:
    """The name of the root file system every alike request shares, None if ``request``'s is its own.

    A root is shared when nothing request-specific goes into it: the inputs
    dir and every additional file are in scratch paths.  Alike: the same
    scratch paths, working dir, ``/etc`` files (network access, build
    user) and mountpoints runc adds (read-only paths, ``/bin/sh``), so that
    every build sharing a root sees exactly the root it would have alone.
    """
    scratch = request.scratch_paths
    if request.inputs_dir not in scratch:
        return None
    for f in request.additional_files:
        if not any(f.path.startswith(s + "/") for s in scratch):
            return None
    c = request.constraints
    key = json.dumps(
        [
            list(scratch),
            request.working_dir,
            c.network_access,
            c.provide_bin_sh,
            list(c.available_ro_paths),
            config.uid,
            config.gid,
        ]
    )
    return "root-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def make_shared_root(root: Path, request: BuildRequest, config: SandboxConfig) -> None:
    """Create the shared root ``root`` (written aside, renamed into place; a concurrent
    creator may win)."""
    tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
    try:
        make_root(tmp, request, config)
        for name, text in etc_files(config, request.constraints.network_access).items():
            (tmp / "etc" / name).write_text(text)
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.is_dir():
            raise
