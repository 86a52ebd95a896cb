"""Structured attrs files: nlohmann's JSON formatting and Nix 2.8's .attrs.sh rules.

The byte-exact comparison with what Nix 2.8 writes is in test_differential_nix
(the ``structured`` derivation); these pin the corner cases of the rules.
"""

from __future__ import annotations

import json

import pytest

from clients.errors import InvalidRequest
from tvixd.build.structured import attrs_files, dump_json, parse_json, shell_declarations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1.5, "1.5"),
        (3.0, "3.0"),
        (0.1, "0.1"),
        (1e10, "10000000000.0"),
        (123456789012345.0, "123456789012345.0"),
        (1e15, "1e+15"),  # Python: 1000000000000000.0
        (1.5e15, "1.5e+15"),
        (1e16, "1e+16"),
        (0.0001, "0.0001"),
        (1e-5, "1e-05"),
        (2.5e-7, "2.5e-07"),
        (-0.25, "-0.25"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (10**20, "1e+20"),  # beyond uint64: a double, as nlohmann parses it
        (2**63, "9223372036854775808"),  # fits uint64
        (-(2**63), "-9223372036854775808"),
    ],
)
def test_numbers_like_nlohmann(value: float, expected: str) -> None:
    assert dump_json(value) == expected


def test_objects_are_compact_and_sorted_by_bytes() -> None:
    value = {"b": [1, None, True, False], "a": {"é": 'x\n"\\\u0001é'}, "Z": {}}
    assert dump_json(value) == '{"Z":{},"a":{"é":"x\\n\\"\\\\\\u0001é"},"b":[1,null,true,false]}'


def test_shell_declarations_follow_nix() -> None:
    attrs = parse_json(
        json.dumps(
            {
                "s": "it's",
                "i": 7,
                "f": 2.5,
                "whole": 4.0,
                "big": 10000000000,
                "t": True,
                "n": None,
                "no": False,
                "l": [1, "a", None],
                "bad-list": [1, [2]],
                "o": {"k": "v", "x y": 1},
                "bad-obj": {"k": 1.5},
                "1abc": 1,
                "with-dash": 1,
            }
        ).encode()
    )
    assert shell_declarations(attrs) == (
        "declare big=1410065408\n"  # float32 integral, then a wrapping C int
        "declare i=7\n"
        "declare -a l=(1 'a' '' )\n"
        "declare n=''\n"
        "declare no=\n"
        "declare -A o=(['k']='v' ['x y']=1 )\n"
        "declare s='it'\\''s'\n"
        "declare t=1\n"
        "declare whole=4\n"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1]", "must be a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"a": NaN}', "NaN is not allowed"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_bad_json_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_json(data)


def test_outputs_are_added_and_export_references_graph_is_refused() -> None:
    attrs_json, attrs_sh = attrs_files(b'{"name":"x"}', {"out": "/nix/store/a-x"})
    assert attrs_json == b'{"name":"x","outputs":{"out":"/nix/store/a-x"}}'
    assert attrs_sh == b"declare name='x'\ndeclare -A outputs=(['out']='/nix/store/a-x' )\n"
    with pytest.raises(InvalidRequest, match="exportReferencesGraph is not supported"):
        attrs_files(b'{"exportReferencesGraph":{"g":["/nix/store/a-x"]}}', {})
