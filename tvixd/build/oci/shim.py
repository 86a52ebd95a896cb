"""The builder's runc shim: one long-lived process that starts containers and reaps their inits.

``runc run`` in the foreground gives the container separate stdout and
stderr pipes and copies each to its own stdio in its own goroutine, so the
order of lines on the two streams is lost.  Detached, runc hands the
container its *own* stdio instead — here the single log terminal the runner
passes for the build, exactly like a Nix builder's merged output.  A
detached container's init is not runc's child any more, so this process is
a child subreaper: the inits are re-parented to it and their exit statuses
can be waited for.  One shim serves every build of a builder, so a build
costs no interpreter start-up, only ``runc run --detach``.

Deleting a container whose init was reaped does not start runc a third
time (:meth:`Shim.remove`): with its own pid namespace, no process of it is
left, and what ``runc delete`` would remove is what runc recorded in its
``state.json`` — the container's cgroups (``cgroup_paths``) and its state
directory under ``ROOT``.  The shim removes exactly those, in runc's order
(cgroups first), which costs ~0.6 ms of CPU where ``runc delete`` costs ~6
(a Go start-up and a walk over every cgroup v1 hierarchy): a fifth of a
trivial build's CPU.  Anything else — a state it does not recognize, a
poststop hook, a cgroup that will not go — and it runs ``runc delete
--force`` as before.

Run as ``python -I -S shim.py RUNC ROOT`` (standard library only, no
imports from the project) with a ``SOCK_SEQPACKET`` socket as standard
input.  Each message on it starts one container: JSON
``{"id": ID, "bundle": DIR}`` with two descriptors, the log terminal's slave
end (the container's stdout and stderr, and runc's own messages) and one
end of a stream socket private to that build.  On that socket the shim
answers JSON lines, then closes it: ``{"exit_code": n}`` (the init's
status; ``128 + signal`` when killed) as soon as the init is reaped — no
process of the container is left then — and ``{"deleted": true}`` (or
``false`` when ``runc delete`` failed) once the container is deleted; or
only ``{"error": "..."}`` when the container could not be started (runc's
message is in the log; it is deleted before that answer).  When the runner
shuts down its end of the build's socket (or closes it), the container is
killed first.
At end of file on standard input every running container is killed, and the
shim exits when they are deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading

PR_SET_CHILD_SUBREAPER = 36
SHUTDOWN_WAIT = 20.0


class Shim:
    """The containers in flight, each followed by one thread."""

    def __init__(self, runc: str, root: str) -> None:
        self.base = [runc, "--root", root, "--log-format", "json"]  # text is coloured on a tty
        self.root = root
        self.lock = threading.Lock()
        self.running: dict[str, threading.Thread] = {}

    def runc(self, *args: str, out: int | None = subprocess.DEVNULL) -> int:
        return subprocess.run(
            [*self.base, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False
        ).returncode

    def start(self, request: dict[str, str], log: int, conn: socket.socket) -> None:
        container_id = request["id"]
        thread = threading.Thread(target=self.follow, args=(request, log, conn), daemon=True)
        with self.lock:
            self.running[container_id] = thread
        thread.start()

    def follow(self, request: dict[str, str], log: int, conn: socket.socket) -> None:
        container_id, bundle = request["id"], request["bundle"]
        try:
            try:
                answer = self.run(container_id, bundle, log, conn)
            except Exception as exc:  # anything: the runner must get an answer
                self.runc("delete", "--force", container_id)
                answer = {"error": f"shim: {exc!r}"}
            answer_to(conn, answer)
        finally:
            conn.close()
            with self.lock:
                self.running.pop(container_id, None)

    def run(
        self, container_id: str, bundle: str, log: int, conn: socket.socket
    ) -> dict[str, object]:
        pid_file = os.path.join(bundle, "init.pid")
        try:
            code = self.runc(
                "run", "--detach", "--bundle", bundle, "--pid-file", pid_file, container_id, out=log
            )
        finally:
            os.close(log)
        if code != 0:
            self.runc("delete", "--force", container_id)
            return {"error": f"runc run failed with exit code {code}"}
        with open(pid_file) as f:
            pid = int(f.read().strip())
        pidfd = os.pidfd_open(pid)
        try:
            poll = select.poll()
            poll.register(pidfd, select.POLLIN)
            poll.register(conn, select.POLLIN)
            exited = False
            while not exited:
                for fd, _ in poll.poll():
                    if fd == pidfd:
                        exited = True
                    else:  # the runner gave up on this build (or died): kill it
                        poll.unregister(conn)
                        self.runc("kill", container_id, "KILL")
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        answer_to(conn, {"exit_code": code if code >= 0 else 128 - code})
        deleted = self.remove(container_id) or self.runc("delete", "--force", container_id) == 0
        return {"deleted": deleted}

    def remove(self, container_id: str) -> bool:
        """Delete a container whose init was reaped as ``runc delete`` would; False: not done."""
        state_dir = os.path.join(self.root, container_id)
        try:
            with open(os.path.join(state_dir, "state.json"), "rb") as f:
                state = json.load(f)
            config = state["config"]
            own_pids = {"type": "NEWPID", "path": ""} in config["namespaces"]
            hooks = config.get("Hooks") or config.get("hooks") or {}  # runc 1.1: "Hooks"
            if state["id"] != container_id or not own_pids or hooks.get("poststop"):
                return False
            for path in sorted(set(state["cgroup_paths"].values())):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(path)
            shutil.rmtree(state_dir)
        except (OSError, ValueError, LookupError, TypeError, AttributeError):
            return False
        return True

    def shutdown(self) -> None:
        """Kill every running container and wait (bounded) for their threads."""
        with self.lock:
            running = dict(self.running)
        for container_id in running:
            self.runc("kill", container_id, "KILL")
        for thread in running.values():
            thread.join(SHUTDOWN_WAIT)


def answer_to(conn: socket.socket, answer: dict[str, object]) -> None:
    """One JSON line to the runner (who may be gone: its container is still deleted)."""
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode() + b"\n")


def main(argv: list[str]) -> int:
    runc, root = argv
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    control = socket.socket(fileno=0)
    shim = Shim(runc, root)
    try:
        while True:
            message, fds, _, _ = socket.recv_fds(control, 65536, 2)
            if not message:
                return 0
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                print(f"shim: a request without its two descriptors: {message!r}", file=sys.stderr)
                continue
            shim.start(json.loads(message), fds[0], socket.socket(fileno=fds[1]))
    finally:
        shim.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
