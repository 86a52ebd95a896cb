"""Build domain types: the rules a BuildRequest and a Build obey, and the wire conversion."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.build import wire
from clients.build.errors import BuildFailed
from clients.build.model import (
    AdditionalFile,
    Build,
    BuildConstraints,
    BuildRequest,
    EnvVar,
    sorted_env,
)
from clients.castore.model import DirectoryNode, FileNode, SymlinkNode
from clients.errors import InvalidRequest
from proto.gen.tvix.build import v1 as build_pb
from proto.gen.tvixd import v1 as tvixd_pb

DIGEST = bytes(range(32))


def request(**changes: Any) -> BuildRequest:
    base: dict[str, Any] = {
        "command_args": ("/bin/sh", "-c", "true"),
        "outputs": ("nix/store/a-out", "nix/store/b-dev"),
        "constraints": BuildConstraints("x86_64-linux", provide_bin_sh=True),
        "inputs": (
            DirectoryNode(b"a-dir", DIGEST, 3),
            FileNode(b"b-file", DIGEST, 10, executable=True),
            SymlinkNode(b"c-link", b"target"),
        ),
        "working_dir": "build",
        "scratch_paths": ("build", "nix/store"),
        "inputs_dir": "nix/store",
        "environment_vars": (EnvVar("A", b"1"), EnvVar("B", b"\xff")),
        "additional_files": (AdditionalFile("build/.attr-x", b"data"),),
        "refscan_needles": ("abc", "def"),
    }
    # outputs must be sorted: reorder the default
    base["outputs"] = tuple(sorted(base["outputs"]))
    base.update(changes)
    return BuildRequest(**base)


def test_a_valid_request_round_trips_through_the_wire() -> None:
    original = request()
    encoded = bytes(wire.request_to_proto(original))
    assert wire.request_from_proto(build_pb.BuildRequest().parse(encoded)) == original


_FILE_A = FileNode(b"a", bytes(32), 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"command_args": ()}, "command_args must not be empty"),
        ({"command_args": ("",)}, "command_args must not be empty"),
        ({"command_args": ("a\0b",)}, "contains NUL"),
        ({"working_dir": "/build"}, "must be relative"),
        ({"working_dir": "build/"}, "not a clean path"),
        ({"working_dir": "a/../b"}, "not a clean path"),
        ({"working_dir": "a//b"}, "not a clean path"),
        ({"inputs_dir": "./nix"}, "not a clean path"),
        ({"scratch_paths": ("nix/store", "build")}, "scratch_paths must be sorted"),
        ({"scratch_paths": ("build", "build")}, "duplicate"),
        ({"scratch_paths": ("",)}, "not a clean path"),
        ({"outputs": ("nix/store/b", "nix/store/a")}, "outputs must be sorted"),
        ({"outputs": ("../etc/passwd",)}, "not a clean path"),
        ({"outputs": ("/nix/store/a",)}, "must be relative"),
        ({"environment_vars": (EnvVar("B", b""), EnvVar("A", b""))}, "environment_vars"),
        ({"environment_vars": (EnvVar("A", b""), EnvVar("A", b"x"))}, "duplicate"),
        ({"additional_files": (AdditionalFile("b", b""), AdditionalFile("a", b""))}, "additional_files"),
        ({"inputs": (SymlinkNode(b"b", b"t"), SymlinkNode(b"a", b"t"))}, "inputs"),
        ({"inputs": (SymlinkNode(b"a/b", b"t"),)}, "not a valid entry name"),
        ({"inputs": (SymlinkNode(b"..", b"t"),)}, "not a valid entry name"),
        ({"inputs": (DirectoryNode(b"a", b"short", 1),)}, "digest of 5 bytes"),
        ({"inputs": (SymlinkNode(b"a", b""),)}, "empty target"),
        # after valid file and directory inputs (the whole-list checks, then the precise one)
        ({"inputs": (_FILE_A, FileNode(b"b\0", bytes(32), 1))}, "inputs[1]: name b'b"),
        ({"inputs": (_FILE_A, DirectoryNode(b".", bytes(32), 1))}, "inputs[1]: name b'.'"),
        ({"inputs": (_FILE_A, DirectoryNode(b"b", bytes(31), 1))}, "inputs[1]: directory node b'b' has a digest of 31"),
        ({"inputs": (_FILE_A, SymlinkNode(b"b", b""))}, "inputs[1]: symlink b'b' has an empty target"),
        ({"inputs": (_FILE_A, _FILE_A)}, "duplicate b'a' at position 1"),
        ({"inputs": (FileNode(b"b", bytes(32), 1), _FILE_A)}, "must be sorted: b'a' at position 1 comes after b'b'"),
        ({"refscan_needles": ("",)}, "refscan_needles[0] is empty"),
    ],
)  # fmt: skip
def test_invalid_requests_are_rejected_naming_the_problem(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        request(**changes)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EnvVar("", b""), "empty or contains '='"),
        (lambda: EnvVar("A=B", b""), "empty or contains '='"),
        (lambda: EnvVar("A", b"x\0"), "containing NUL"),
        (lambda: AdditionalFile("/abs", b""), "must be relative"),
        (lambda: BuildConstraints(""), "system must not be empty"),
        (lambda: BuildConstraints("s", available_ro_paths=("rel",)), "must be absolute"),
        (lambda: BuildConstraints("s", available_ro_paths=("/b", "/a")), "must be sorted"),
        (lambda: BuildConstraints("s", min_memory=-1), "not a uint64"),
    ],
)
def test_invalid_parts_are_rejected(make: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        make()


def test_sorted_env_sorts_and_later_values_win() -> None:
    assert sorted_env([("b", b"1"), ("a", b"2"), ("b", b"3")]) == (
        EnvVar("a", b"2"),
        EnvVar("b", b"3"),
    )


def test_build_checks_outputs_and_needles() -> None:
    r = request()
    nodes = (SymlinkNode(b"a-out", b"x"), SymlinkNode(b"b-dev", b"y"))
    build = Build(r, nodes, ((0, 1), ()))
    assert build.needles_of(0) == ("abc", "def")
    assert wire.build_from_proto(build_pb.Build().parse(bytes(wire.build_to_proto(build)))) == build
    with pytest.raises(InvalidRequest, match="one node and one needle list per requested output"):
        Build(r, nodes[:1], ((),))
    with pytest.raises(InvalidRequest, match="is not a needle index"):
        Build(r, nodes, ((2,), ()))
    with pytest.raises(InvalidRequest, match="sorted and unique"):
        Build(r, nodes, ((1, 0), ()))


def test_events_round_trip() -> None:
    build = Build(replace(request(), outputs=("nix/store/x",)), (SymlinkNode(b"x", b"t"),), ((),))
    assert wire.event_from_proto(wire.event_log(b"line")) == b"line"
    assert wire.event_from_proto(wire.event_result(build)) == build
    failure = BuildFailed("it broke", exit_code=2, log_tail=[b"last words"])
    decoded = wire.event_from_proto(wire.event_failure(failure))
    assert isinstance(decoded, BuildFailed)
    assert decoded.exit_code == 2
    assert "it broke" in decoded.reason
    assert "last words" in decoded.reason


def test_missing_constraints_are_rejected() -> None:
    message = wire.request_to_proto(request())
    message.constraints = build_pb.BuildRequestBuildConstraints()
    with pytest.raises(InvalidRequest, match="system must not be empty"):
        wire.request_from_proto(build_pb.BuildRequest().parse(bytes(message)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["request", "build", "event"]), st.binary(max_size=300))
def test_decoding_arbitrary_bytes_only_raises_invalid_request(kind: str, data: bytes) -> None:
    message_type, decode = {
        "request": (build_pb.BuildRequest, wire.request_from_proto),
        "build": (build_pb.Build, wire.build_from_proto),
        "event": (tvixd_pb.BuildEvent, wire.event_from_proto),
    }[kind]
    try:
        message = message_type().parse(data)
    except Exception:  # betterproto's own parse errors: grpclib reports these itself
        return
    with contextlib.suppress(InvalidRequest):
        decode(message)
