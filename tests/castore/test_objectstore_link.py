"""How the objectstore names an anonymous temp file (``link_fd``).

``linkat(fd, "", dir_fd, name, AT_EMPTY_PATH)`` where the kernel allows it (it
needs ``CAP_DAC_READ_SEARCH``), else ``linkat`` of ``/proc/self/fd/N``; a refusal
of the first switches to the second for good; both refuse an existing name.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from tvixd.castore.blobs import objectstore
from tvixd.castore.blobs.objectstore import DIR_FLAGS, link_fd


def _anonymous_file(directory: Path, data: bytes) -> int:
    fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o444)
    os.write(fd, data)
    return fd


def test_link_fd_names_an_anonymous_file_and_refuses_an_existing_name(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, DIR_FLAGS)
    first, second = _anonymous_file(tmp_path, b"one"), _anonymous_file(tmp_path, b"two")
    try:
        link_fd(first, "blob", dir_fd)
        with pytest.raises(FileExistsError):
            link_fd(second, "blob", dir_fd)
    finally:
        for fd in (first, second, dir_fd):
            os.close(fd)
    assert (tmp_path / "blob").read_bytes() == b"one"


@pytest.mark.skipif(
    not objectstore._empty_path_link.usable or os.geteuid() != 0,
    reason="linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH",
)
def test_link_fd_needs_no_proc_path_where_the_kernel_allows_empty_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_proc_link(*args: object, **kwargs: object) -> None:
        raise AssertionError("linked through /proc")

    monkeypatch.setattr(os, "link", no_proc_link)
    dir_fd = os.open(tmp_path, DIR_FLAGS)
    fd = _anonymous_file(tmp_path, b"contents")
    try:
        link_fd(fd, "blob", dir_fd)
    finally:
        os.close(fd)
        os.close(dir_fd)
    assert (tmp_path / "blob").read_bytes() == b"contents"
    assert objectstore._empty_path_link.usable


def test_a_refused_empty_path_link_falls_back_to_proc_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def refuse(*args: object) -> int:
        calls.append(1)
        ctypes.set_errno(errno.ENOENT)  # what Linux answers without CAP_DAC_READ_SEARCH
        return -1

    link = objectstore._empty_path_link
    monkeypatch.setattr(link, "_fn", refuse, raising=False)
    monkeypatch.setattr(link, "usable", True)
    dir_fd = os.open(tmp_path, DIR_FLAGS)
    fds = [_anonymous_file(tmp_path, data) for data in (b"a", b"b")]
    try:
        link_fd(fds[0], "first", dir_fd)
        link_fd(fds[1], "second", dir_fd)
    finally:
        for fd in [*fds, dir_fd]:
            os.close(fd)
    assert (tmp_path / "first").read_bytes() == b"a"
    assert (tmp_path / "second").read_bytes() == b"b"
    assert calls == [1]  # refused once, then not tried again
    assert not link.usable
