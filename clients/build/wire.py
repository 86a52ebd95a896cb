"""The one place converting tvix.build.v1 / tvixd.v1 build messages to and from domain types.

Decoding is defensive (betterproto checks no wire types): every field's Python
type is checked, and the domain constructors then apply every rule, so a
decoded :class:`BuildRequest` or :class:`Build` is valid.  Rejections raise
:class:`InvalidRequest` naming the field.  A missing ``constraints`` message
decodes as the default message (and is then rejected for its empty system).
"""

from __future__ import annotations

from typing import Any

import betterproto

from clients.build.errors import BuildFailed
from clients.build.model import AdditionalFile, Build, BuildConstraints, BuildRequest, EnvVar
from clients.castore import wire as castore_wire
from clients.castore.wire import expect_message, expect_type
from clients.errors import InvalidRequest
from proto.gen.tvix.build import v1 as build_pb
from proto.gen.tvixd import v1 as tvixd_pb

__all__ = [
    "build_from_proto",
    "build_to_proto",
    "event_failure",
    "event_from_proto",
    "event_log",
    "event_result",
    "failure_from_proto",
    "request_from_proto",
    "request_to_proto",
]


def _strings(values: object, field: str) -> tuple[str, ...]:
    return tuple(expect_type(v, str, f"{field}[{i}]") for i, v in enumerate(_list(values, field)))


def _list(values: object, field: str) -> list[Any]:
    if not isinstance(values, list):
        raise InvalidRequest(f"malformed {field}: expected a repeated field")
    return values


def _constraints_from_proto(message: object) -> BuildConstraints:
    m = expect_message(message, build_pb.BuildRequestBuildConstraints, "BuildRequest.constraints")
    return BuildConstraints(
        system=expect_type(m.system, str, "BuildConstraints.system"),
        min_memory=expect_type(m.min_memory, int, "BuildConstraints.min_memory"),
        available_ro_paths=_strings(m.available_ro_paths, "BuildConstraints.available_ro_paths"),
        network_access=expect_type(m.network_access, bool, "BuildConstraints.network_access"),
        provide_bin_sh=expect_type(m.provide_bin_sh, bool, "BuildConstraints.provide_bin_sh"),
    )


def request_from_proto(message: object) -> BuildRequest:
    """The domain request of a ``tvix.build.v1.BuildRequest``; InvalidRequest if it breaks a rule."""
    m = expect_message(message, build_pb.BuildRequest, "BuildRequest")
    env = []
    for i, e in enumerate(_list(m.environment_vars, "BuildRequest.environment_vars")):
        e = expect_message(e, build_pb.BuildRequestEnvVar, f"environment_vars[{i}]")
        env.append(
            EnvVar(
                expect_type(e.key, str, f"environment_vars[{i}].key"),
                expect_type(e.value, bytes, f"environment_vars[{i}].value"),
            )
        )
    files = []
    for i, f in enumerate(_list(m.additional_files, "BuildRequest.additional_files")):
        f = expect_message(f, build_pb.BuildRequestAdditionalFile, f"additional_files[{i}]")
        files.append(
            AdditionalFile(
                expect_type(f.path, str, f"additional_files[{i}].path"),
                expect_type(f.contents, bytes, f"additional_files[{i}].contents"),
            )
        )
    constraints = m.constraints
    if constraints is None:  # absent (betterproto may leave an unset message field as None)
        constraints = build_pb.BuildRequestBuildConstraints()
    return BuildRequest(
        inputs=tuple(
            castore_wire.node_from_proto(n) for n in _list(m.inputs, "BuildRequest.inputs")
        ),
        command_args=_strings(m.command_args, "BuildRequest.command_args"),
        working_dir=expect_type(m.working_dir, str, "BuildRequest.working_dir"),
        scratch_paths=_strings(m.scratch_paths, "BuildRequest.scratch_paths"),
        inputs_dir=expect_type(m.inputs_dir, str, "BuildRequest.inputs_dir"),
        outputs=_strings(m.outputs, "BuildRequest.outputs"),
        environment_vars=tuple(env),
        constraints=_constraints_from_proto(constraints or build_pb.BuildRequestBuildConstraints()),
        additional_files=tuple(files),
        refscan_needles=_strings(m.refscan_needles, "BuildRequest.refscan_needles"),
    )


def request_to_proto(request: BuildRequest) -> build_pb.BuildRequest:
    c = request.constraints
    return build_pb.BuildRequest(
        inputs=[castore_wire.node_to_proto(n) for n in request.inputs],
        command_args=list(request.command_args),
        working_dir=request.working_dir,
        scratch_paths=list(request.scratch_paths),
        inputs_dir=request.inputs_dir,
        outputs=list(request.outputs),
        environment_vars=[
            build_pb.BuildRequestEnvVar(key=e.key, value=e.value) for e in request.environment_vars
        ],
        constraints=build_pb.BuildRequestBuildConstraints(
            system=c.system,
            min_memory=c.min_memory,
            available_ro_paths=list(c.available_ro_paths),
            network_access=c.network_access,
            provide_bin_sh=c.provide_bin_sh,
        ),
        additional_files=[
            build_pb.BuildRequestAdditionalFile(path=f.path, contents=f.contents)
            for f in request.additional_files
        ],
        refscan_needles=list(request.refscan_needles),
    )


def build_from_proto(message: object) -> Build:
    """The domain Build of a ``tvix.build.v1.Build``; InvalidRequest if it breaks a rule."""
    m = expect_message(message, build_pb.Build, "Build")
    needles = []
    for i, found in enumerate(_list(m.outputs_needles, "Build.outputs_needles")):
        found = expect_message(found, build_pb.BuildOutputNeedles, f"Build.outputs_needles[{i}]")
        needles.append(
            tuple(
                expect_type(n, int, f"Build.outputs_needles[{i}]")
                for n in _list(found.needles, f"outputs_needles[{i}]")
            )
        )
    return Build(
        request=request_from_proto(m.build_request),
        outputs=tuple(castore_wire.node_from_proto(n) for n in _list(m.outputs, "Build.outputs")),
        outputs_needles=tuple(needles),
    )


def build_to_proto(build: Build) -> build_pb.Build:
    return build_pb.Build(
        build_request=request_to_proto(build.request),
        outputs=[castore_wire.node_to_proto(n) for n in build.outputs],
        outputs_needles=[
            build_pb.BuildOutputNeedles(needles=list(found)) for found in build.outputs_needles
        ],
    )


def event_log(line: bytes) -> tvixd_pb.BuildEvent:
    return tvixd_pb.BuildEvent(log=tvixd_pb.BuildLog(line=line))


def event_result(build: Build) -> tvixd_pb.BuildEvent:
    return tvixd_pb.BuildEvent(result=build_to_proto(build))


def event_failure(failure: BuildFailed) -> tvixd_pb.BuildEvent:
    """A failure event; the reason carries the log tail (the message has no field for it)."""
    return tvixd_pb.BuildEvent(
        failure=tvixd_pb.BuildFailure(reason=str(failure), exit_code=failure.exit_code)
    )


def failure_from_proto(message: object) -> BuildFailed:
    m = expect_message(message, tvixd_pb.BuildFailure, "BuildFailure")
    return BuildFailed(
        expect_type(m.reason, str, "BuildFailure.reason"),
        exit_code=expect_type(m.exit_code, int, "BuildFailure.exit_code"),
    )


def event_from_proto(message: object) -> bytes | Build | BuildFailed:
    """A log line, the result, or the failure a ``tvixd.v1.BuildEvent`` carries."""
    m = expect_message(message, tvixd_pb.BuildEvent, "BuildEvent")
    which, value = betterproto.which_one_of(m, "event")
    match which:
        case "log":
            return bytes(
                expect_type(
                    expect_message(value, tvixd_pb.BuildLog, "BuildLog").line,
                    bytes,
                    "BuildLog.line",
                )
            )
        case "result":
            return build_from_proto(value)
        case "failure":
            return failure_from_proto(value)
    raise InvalidRequest("malformed BuildEvent: none of log, result, failure is set")
