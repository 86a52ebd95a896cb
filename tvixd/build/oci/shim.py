"""The per-build shim: runs one container so that stdout and stderr stay one ordered stream.

``runc run`` (foreground) gives the container separate stdout and stderr
pipes and copies each to its own stdio in its own goroutine, so the order of
lines on the two streams is lost.  Detached runc (``create`` / ``start``)
instead hands the container its *own* stdio — the single log pipe the
runner gives this shim as stdout and stderr, exactly like a Nix builder's
merged output.  A detached container's init is not runc's child any more,
so this shim makes itself a child subreaper: the init is re-parented to it,
and its exit status can be waited for.

Run as ``python -I -S shim.py RUNC ROOT BUNDLE ID STATUS_FILE`` (standard
library only, no imports from the project).  Writes ``STATUS_FILE``
(JSON): ``{"exit_code": n}`` (the init's status; ``128 + signal`` when
killed) or ``{"error": "..."}`` when the container could not be started
(runc's message is in the log).  Deletes the container at the end.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def _status(path: str, **value: object) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)


def main(argv: list[str]) -> int:
    runc, root, bundle, container_id, status_file = argv
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _status(status_file, error=f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        return 1
    base = [runc, "--root", root]
    pid_file = os.path.join(bundle, "init.pid")
    create = subprocess.run(
        [*base, "create", "--bundle", bundle, "--pid-file", pid_file, container_id],
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if create.returncode != 0:
        _status(status_file, error=f"runc create failed with exit code {create.returncode}")
        return 1
    with open(pid_file) as f:
        pid = int(f.read().strip())
    start = subprocess.run([*base, "start", container_id], stdin=subprocess.DEVNULL, check=False)
    if start.returncode != 0:
        subprocess.run([*base, "delete", "--force", container_id], check=False)
        _status(status_file, error=f"runc start failed with exit code {start.returncode}")
        return 1
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    subprocess.run(
        [*base, "delete", "--force", container_id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    _status(status_file, exit_code=code if code >= 0 else 128 - code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
