"""narinfo parsing, rendering, fingerprints and verification against the narinfo vectors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress, InvalidNarInfo, NarInfo, fingerprint
from nixcompat.signing import Signature, SigningKey, VerifyingKey
from nixcompat.storepath import StorePath
from tests.vectors import entries, entry_id

NARINFOS = entries("narinfo", kind="narinfo")
KEYPAIRS = {k["public_key"].partition(":")[0]: k for k in entries("narinfo", kind="keypair")}
IDS = [entry_id(e) for e in NARINFOS]

# A narinfo as `nix copy` writes it, plus a Deriver line (so every field is present): the
# base for the error table.
GOOD = next(e for e in NARINFOS if e["id"] == "xz/a6k629f66kmpw6j7mw55767w90nc6fps.narinfo")
GOOD_TEXT: str = GOOD["narinfo"].replace(
    "\nSig: ", "\nDeriver: wik7cg8kpxms2fs3yk7blysbra6w8890-oracle-selfref.drv\nSig: "
)
GOOD_LINES: list[str] = GOOD_TEXT.splitlines(keepends=True)


def _line_no(key: str) -> int:
    return next(i for i, line in enumerate(GOOD_LINES, 1) if line.startswith(key + ": "))


def _with(key: str, value: str | None) -> str:
    """GOOD_TEXT with ``key``'s value replaced (or the line removed when ``value`` is None)."""
    out = []
    for line in GOOD_LINES:
        if line.startswith(key + ": "):
            if value is None:
                continue
            line = f"{key}: {value}\n"
        out.append(line)
    return "".join(out)


def test_vectors_are_present() -> None:
    assert len(NARINFOS) == 53
    assert sum(1 for e in NARINFOS if "tampered" in e) == 8


@pytest.mark.parametrize("entry", NARINFOS, ids=IDS)
def test_vector_parse_render_fingerprint(entry: dict[str, Any]) -> None:
    text: str = entry["narinfo"]
    info = NarInfo.parse(text)
    assert info.store_path.absolute == entry["store_path"]
    assert info.fingerprint() == entry["fingerprint"]
    if entry.get("tampered", "").startswith("NarHash in hex"):
        # not what Nix writes: the same digest comes back in Nix's nixbase32 form
        hex_line = next(line for line in text.splitlines() if line.startswith("NarHash: "))
        b32 = NixHash.parse(hex_line.removeprefix("NarHash: ")).to_nix_string()
        assert info.render() == text.replace(hex_line, f"NarHash: {b32}")
    else:
        assert info.render() == text
    assert NarInfo.parse(text.encode()) == info
    assert NarInfo.parse(info.render()) == info


@pytest.mark.parametrize("entry", NARINFOS, ids=IDS)
def test_vector_verifications(entry: dict[str, Any]) -> None:
    info = NarInfo.parse(entry["narinfo"])
    sigs = {str(s) for s in info.signatures}
    for v in entry["verifications"]:
        assert v["signature"] in sigs
        key = VerifyingKey.parse(v["public_key"])
        sig = Signature.parse(v["signature"])
        assert key.verify(info.fingerprint(), sig) is v["expected_valid"], v
    keys = [VerifyingKey.parse(k) for k in entry["public_keys"]]
    assert info.verify(keys) is entry["expected_trusted"]
    assert entry["expected_trusted"] is any(v["expected_valid"] for v in entry["verifications"])
    if "nix28_verify_trusted" in entry:
        assert info.verify(keys) is entry["nix28_verify_trusted"]
    assert not info.verify([])


RESIGNABLE = [
    (e, v)
    for e in NARINFOS
    if "tampered" not in e
    for v in e["verifications"]
    if v["public_key"] in {k["public_key"] for k in KEYPAIRS.values()}
    and v["signature"].partition(":")[0] == v["public_key"].partition(":")[0]
]


@pytest.mark.parametrize(
    ("entry", "verification"),
    RESIGNABLE,
    ids=[f"{entry_id(e)}-{v['signature'][:24]}" for e, v in RESIGNABLE],
)
def test_resigning_reproduces_the_vector_signature(
    entry: dict[str, Any], verification: dict[str, Any]
) -> None:
    """ed25519 is deterministic: our signature equals Nix's exactly when the vector says valid."""
    info = dataclasses.replace(NarInfo.parse(entry["narinfo"]), signatures=())
    sig = Signature.parse(verification["signature"])
    key = SigningKey.parse(KEYPAIRS[sig.name]["secret_key"])
    assert (info.signed(key).signatures == (sig,)) is verification["expected_valid"]
    assert info.signed(key).verify([key.to_public()])


def test_with_signature_keeps_a_sorted_set_like_nix() -> None:
    entry = next(e for e in NARINFOS if e["id"] == "xz/whngh2scnic0dc913p7qwpj6sp6fpk30.narinfo")
    info = NarInfo.parse(entry["narinfo"])
    assert len(info.signatures) == 4
    stripped = dataclasses.replace(info, signatures=())
    for sig in reversed(info.signatures):
        stripped = stripped.with_signature(sig).with_signature(sig)
    assert stripped == info
    assert stripped.render() == entry["narinfo"]


def test_fingerprint_sorts_and_deduplicates_references() -> None:
    curl = NarInfo.parse(next(e for e in NARINFOS if e["id"] == "upstream/curl")["narinfo"])
    shuffled = dataclasses.replace(curl, references=curl.references[::-1] + curl.references[:1])
    assert shuffled.fingerprint() == curl.fingerprint()
    assert shuffled.render() != curl.render()  # but the file keeps the order it was given
    fp = fingerprint(curl.store_path, curl.nar_hash, curl.nar_size, reversed(curl.references))
    assert fp == curl.fingerprint()
    with pytest.raises(InvalidNarInfo, match="not sha256"):
        fingerprint(curl.store_path, NixHash.compute(HashAlgo.sha1, b""), 1, [])
    with pytest.raises(InvalidNarInfo, match="NAR size is 0"):
        fingerprint(curl.store_path, curl.nar_hash, 0, [])


def test_accepted_variations() -> None:
    info = NarInfo.parse(GOOD_TEXT)
    nar_hash = info.nar_hash
    for form in (nar_hash.to_sri(), nar_hash.to_hex_string(), f"sha256:{nar_hash.to_base64()}"):
        assert NarInfo.parse(_with("NarHash", form)) == info
    # unknown keys are ignored (anywhere), like Nix
    assert NarInfo.parse("Frobnicate: yes\n" + GOOD_TEXT + "X-Other: 1\n") == info
    # a missing Compression means bzip2
    assert NarInfo.parse(_with("Compression", None)).compression == "bzip2"
    # old Nix wrote this for "no deriver"
    assert NarInfo.parse(_with("Deriver", "unknown-deriver")).deriver is None
    with_deriver = NarInfo.parse(_with("Deriver", "yqa5w2f9x4zzcjsxx4s8v7rqjl7dkdg6-x.drv"))
    assert with_deriver.deriver == StorePath.parse_basename(
        "yqa5w2f9x4zzcjsxx4s8v7rqjl7dkdg6-x.drv"
    )
    # optional fields may be missing
    minimal = NarInfo.parse(
        _with("FileHash", None).replace("FileSize: 220\n", "").replace("References: ", "X: ")
    )
    assert (minimal.file_hash, minimal.file_size, minimal.references) == (None, None, ())
    sha512 = NixHash.compute(HashAlgo.sha512, b"x")
    assert NarInfo.parse(_with("FileHash", sha512.to_sri())).file_hash == sha512


def _err(key: str, value: str | None) -> tuple[str, str]:
    return _with(key, value), f"line {_line_no(key)}: " if value is not None else ""


END = len(GOOD_LINES) + 1
ERRORS: list[tuple[str, str, str]] = [
    ("empty", "", "narinfo is empty"),
    ("no-final-newline", GOOD_TEXT[:-1], f"line {len(GOOD_LINES)} does not end with a newline"),
    ("crlf", GOOD_TEXT.replace("\n", "\r\n"), "line 1 ends in a carriage return"),
    (
        "blank-line",
        GOOD_TEXT.replace("\nURL", "\n\nURL"),
        f"line {_line_no('URL')}: expected 'Key: value'",
    ),
    ("no-colon", GOOD_TEXT + "Garbage\n", f"line {END}: expected 'Key: value', got 'Garbage'"),
    ("no-space", GOOD_TEXT + "Sig:x\n", f"line {END}: expected 'Key: value'"),
    ("empty-key", GOOD_TEXT + ": v\n", f"line {END}: expected 'Key: value'"),
    (
        "dup-narsize",
        GOOD_TEXT + "NarSize: 232\n",
        f"line {END}: duplicate NarSize .first on line {_line_no('NarSize')}",
    ),
    ("dup-refs", GOOD_TEXT + "References: \n", f"line {END}: duplicate References"),
    (
        "dup-ca",
        GOOD_TEXT + GOOD_LINES[-1],
        f"line {END}: duplicate CA .first on line {_line_no('CA')}",
    ),
    ("no-storepath", _with("StorePath", None), "no StorePath line"),
    ("no-url", _with("URL", None), "no URL line"),
    ("no-narhash", _with("NarHash", None), "no NarHash line"),
    ("no-narsize", _with("NarSize", None), "no NarSize line"),
    ("empty-url", _with("URL", ""), f"line {_line_no('URL')}: URL is empty"),
    (
        "empty-compression",
        _with("Compression", ""),
        f"line {_line_no('Compression')}: Compression is empty",
    ),
    ("narsize-zero", _with("NarSize", "0"), f"line {_line_no('NarSize')}: NarSize must not be 0"),
    (
        "narsize-negative",
        _with("NarSize", "-1"),
        f"line {_line_no('NarSize')}: NarSize '-1' is not a decimal",
    ),
    (
        "narsize-leading-zero",
        _with("NarSize", "0232"),
        f"line {_line_no('NarSize')}: NarSize '0232'",
    ),
    ("narsize-plus", _with("NarSize", "+232"), f"line {_line_no('NarSize')}: NarSize"),
    ("narsize-space", _with("NarSize", "232 "), f"line {_line_no('NarSize')}: NarSize '232 '"),
    ("narsize-float", _with("NarSize", "2.5"), f"line {_line_no('NarSize')}: NarSize"),
    (
        "narsize-2**64",
        _with("NarSize", str(2**64)),
        f"line {_line_no('NarSize')}: NarSize '18446744073709551616'",
    ),
    ("narsize-huge", _with("NarSize", "9" * 5000), f"line {_line_no('NarSize')}: NarSize '9999"),
    ("filesize-word", _with("FileSize", "big"), f"line {_line_no('FileSize')}: FileSize 'big'"),
    (
        "narhash-sha1",
        _with("NarHash", "sha1:" + "0" * 40),
        f"line {_line_no('NarHash')}: NarHash must be sha256",
    ),
    (
        "narhash-bare",
        _with("NarHash", "0" * 64),
        f"line {_line_no('NarHash')}: NarHash: .*needs an algorithm",
    ),
    (
        "narhash-garbage",
        _with("NarHash", "sha256:xyz"),
        f"line {_line_no('NarHash')}: NarHash: invalid hash",
    ),
    (
        "filehash-garbage",
        _with("FileHash", "md5:00"),
        f"line {_line_no('FileHash')}: FileHash: invalid hash",
    ),
    (
        "storepath-relative",
        _with("StorePath", GOOD["store_path"][11:]),
        f"line {_line_no('StorePath')}: StorePath: ",
    ),
    (
        "storepath-other-dir",
        _with("StorePath", "/gnu" + GOOD["store_path"][4:]),
        f"line {_line_no('StorePath')}: ",
    ),
    (
        "storepath-bad-hash",
        _with("StorePath", "/nix/store/" + "e" * 32 + "-x"),
        f"line {_line_no('StorePath')}: ",
    ),
    (
        "storepath-trailing",
        _with("StorePath", GOOD["store_path"] + "/bin"),
        f"line {_line_no('StorePath')}: ",
    ),
    (
        "ref-absolute",
        _with("References", GOOD["store_path"]),
        f"line {_line_no('References')}: References: ",
    ),
    (
        "ref-double-space",
        _with(
            "References",
            "a6k629f66kmpw6j7mw55767w90nc6fps-oracle-selfref  "
            "qag1slmpd6vd3pycln2z61xdc4dydq23-oracle-dep.txt",
        ),
        f"line {_line_no('References')}: ",
    ),
    (
        "ref-trailing-space",
        _with("References", "a6k629f66kmpw6j7mw55767w90nc6fps-x "),
        f"line {_line_no('References')}: ",
    ),
    (
        "deriver-bad",
        _with("Deriver", "not-a-path"),
        f"line {_line_no('Deriver')}: Deriver: invalid store path",
    ),
    (
        "sig-bad",
        _with("Sig", "k:AAAA"),
        f"line {_line_no('Sig')}: bad Sig: signature 'k': decodes to 3 bytes",
    ),
    (
        "sig-no-name",
        _with("Sig", "A" * 86 + "=="),
        f"line {_line_no('Sig')}: bad Sig: .*no key name",
    ),
    ("ca-prefix", _with("CA", "foo:sha256:x"), f"line {_line_no('CA')}: CA: .*'text:' or 'fixed:'"),
    (
        "ca-text-sha1",
        _with("CA", "text:sha1:" + "0" * 40),
        f"line {_line_no('CA')}: CA: .*must use sha256",
    ),
    (
        "ca-no-algo",
        _with("CA", "fixed:r:" + "0" * 52),
        rf"line {_line_no('CA')}: CA: .*'<algo>:<digest>'",
    ),
    (
        "ca-bad-algo",
        _with("CA", "fixed:sha3:" + "0" * 52),
        f"line {_line_no('CA')}: CA: .*unknown hash",
    ),
    (
        "ca-prefixed-twice",
        _with("CA", "fixed:sha256:sha256:" + "0" * 52),
        f"line {_line_no('CA')}: CA: ",
    ),
    ("ca-sri", _with("CA", "fixed:sha256-" + "A" * 43 + "="), f"line {_line_no('CA')}: CA: "),
    ("ca-short", _with("CA", "fixed:r:sha256:0000"), f"line {_line_no('CA')}: CA: .*invalid hash"),
]


@pytest.mark.parametrize(("text", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_malformed_narinfos_are_rejected(text: str, message: str) -> None:
    with pytest.raises(InvalidNarInfo, match=message):
        NarInfo.parse(text)


def test_non_utf8_is_rejected_with_offset() -> None:
    data = GOOD_TEXT.encode().replace(b"URL: nar/", b"URL: nar/\xff")
    offset = len(GOOD_LINES[0]) + len("URL: nar/")
    with pytest.raises(InvalidNarInfo, match=rf"not UTF-8 \(byte offset {offset}: b'\\xff'\)"):
        NarInfo.parse(data)


@pytest.mark.parametrize(
    ("text", "method", "algo", "canonical"),
    [
        ("text:sha256:" + "1" * 52, CaMethod.text, HashAlgo.sha256, None),
        ("fixed:sha1:" + "a" * 32, CaMethod.flat, HashAlgo.sha1, None),
        ("fixed:r:sha512:" + "ff" * 64, CaMethod.recursive, HashAlgo.sha512, "nixbase32"),
        ("fixed:md5:" + "AAAAAAAAAAAAAAAAAAAAAA==", CaMethod.flat, HashAlgo.md5, "nixbase32"),
    ],
)
def test_content_address(
    text: str, method: CaMethod, algo: HashAlgo, canonical: str | None
) -> None:
    ca = ContentAddress.parse(text)
    assert (ca.method, ca.hash.algo) == (method, algo)
    if canonical is None:
        assert str(ca) == text
    else:
        assert str(ca) == text[: text.rindex(":") + 1] + ca.hash.to_nixbase32()
    assert ContentAddress.parse(str(ca)) == ca


def test_constructor_checks_invariants() -> None:
    info = NarInfo.parse(GOOD_TEXT)
    changes: list[tuple[dict[str, Any], str]] = [
        ({"url": "a\nStorePath: /x"}, "URL .* contains a line break"),
        ({"url": ""}, "URL is empty"),
        ({"compression": "x\n"}, "Compression"),
        ({"system": ""}, "System is empty"),
        ({"nar_size": 0}, "NarSize must not be 0"),
        ({"nar_size": -1}, "NarSize -1 is not an integer"),
        ({"file_size": 2**64}, "FileSize"),
        ({"nar_hash": NixHash.compute(HashAlgo.md5, b"")}, "NarHash must be a sha256"),
        ({"ca": None, "nar_size": True}, "NarSize True"),
    ]
    for change, message in changes:
        with pytest.raises(InvalidNarInfo, match=message):
            dataclasses.replace(info, **change)
    with pytest.raises(InvalidNarInfo, match="text content address must use sha256"):
        ContentAddress(CaMethod.text, NixHash.compute(HashAlgo.sha1, b""))


# --- properties -------------------------------------------------------------------------------

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?="
store_paths = st.builds(
    StorePath,
    st.binary(min_size=20, max_size=20),
    st.text(alphabet=_NAME_CHARS, min_size=1, max_size=40),
)
line_values = st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s and "\r" not in s)
hashes = st.builds(
    lambda algo, data: NixHash.compute(algo, data), st.sampled_from(HashAlgo), st.binary()
)
sha256s = st.builds(lambda data: NixHash.compute(HashAlgo.sha256, data), st.binary())
signatures = st.builds(
    Signature,
    st.text(alphabet=_NAME_CHARS + "/", min_size=1, max_size=20),
    st.binary(min_size=64, max_size=64),
)
content_addresses = st.one_of(
    st.builds(ContentAddress, st.just(CaMethod.text), sha256s),
    st.builds(ContentAddress, st.sampled_from([CaMethod.flat, CaMethod.recursive]), hashes),
)
sizes = st.integers(min_value=1, max_value=2**64 - 1)
narinfos = st.builds(
    NarInfo,
    store_path=store_paths,
    url=line_values,
    compression=line_values,
    file_hash=st.none() | hashes,
    file_size=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    nar_hash=sha256s,
    nar_size=sizes,
    references=st.lists(store_paths, max_size=4).map(tuple),
    deriver=st.none() | store_paths,
    system=st.none() | line_values,
    signatures=st.lists(signatures, max_size=3).map(tuple),
    ca=st.none() | content_addresses,
)


@settings(max_examples=150, deadline=None)
@given(info=narinfos)
def test_render_parse_round_trip(info: NarInfo) -> None:
    text = info.render()
    assert NarInfo.parse(text) == info
    assert NarInfo.parse(text.encode()).render() == text
    key = SigningKey(KEYPAIRS["vector-test-1"]["public_key"].partition(":")[0], bytes(32))
    assert info.signed(key).verify([key.to_public()])
    assert not info.verify([key.to_public()])  # random signature bytes never verify


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(GOOD_TEXT)),
    junk=st.text(max_size=8) | st.sampled_from([":", ": ", "\n", "Sig: ", "References: "]),
    cut=st.integers(min_value=0, max_value=8),
)
def test_mutated_narinfos_raise_only_typed_errors(index: int, junk: str, cut: int) -> None:
    text = GOOD_TEXT[:index] + junk + GOOD_TEXT[index + cut :]
    try:
        info = NarInfo.parse(text)
    except NixCompatError:
        return
    assert NarInfo.parse(info.render()) == info
