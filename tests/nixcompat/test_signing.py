"""ed25519 keys and signatures in Nix's ``name:base64`` form, against the narinfo vectors."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat.errors import NixCompatError
from nixcompat.signing import (
    InvalidKey,
    InvalidSignature,
    Signature,
    SigningKey,
    VerifyingKey,
    verify_any,
)
from tests.vectors import entries, entry_id

KEYPAIRS = entries("narinfo", kind="keypair")
SIGNS = entries("narinfo", kind="sign")
SIGNATURES = entries("narinfo", kind="signature")
SIGNATURE_PARSES = entries("narinfo", kind="signature_parse")
PUBLIC_KEY_PARSES = entries("narinfo", kind="public_key_parse")

SECRET = KEYPAIRS[0]["secret_key"]


def _secret_b64(secret_key: str) -> str:
    return secret_key.partition(":")[2]


def _ids(es: list[dict[str, Any]], field: str) -> list[str]:
    return [e.get("note") or e.get("reason") or entry_id(e) or e[field][:40] for e in es]


def test_vectors_are_present() -> None:
    assert (len(KEYPAIRS), len(SIGNS), len(SIGNATURES)) == (3, 3, 5)
    assert (len(SIGNATURE_PARSES), len(PUBLIC_KEY_PARSES)) == (5, 3)


@pytest.mark.parametrize("entry", KEYPAIRS, ids=_ids(KEYPAIRS, "secret_key"))
def test_keypair_conversion(entry: dict[str, Any]) -> None:
    key = SigningKey.parse(entry["secret_key"])
    assert str(key) == entry["secret_key"]
    assert str(key.to_public()) == entry["public_key"]
    assert key.to_public() == VerifyingKey.parse(entry["public_key"])


@pytest.mark.parametrize("entry", SIGNS, ids=[e["fingerprint"][:50] for e in SIGNS])
def test_deterministic_signature(entry: dict[str, Any]) -> None:
    key = SigningKey.parse(entry["secret_key"])
    sig = key.sign(entry["fingerprint"])
    assert str(sig) == entry["expected_signature"]
    assert sig == Signature.parse(entry["expected_signature"])
    assert key.sign(entry["fingerprint"].encode()) == sig
    assert key.to_public().verify(entry["fingerprint"], sig)


@pytest.mark.parametrize("entry", SIGNATURES, ids=_ids(SIGNATURES, "signature"))
def test_signature_verification(entry: dict[str, Any]) -> None:
    pub = VerifyingKey.parse(entry["public_key"])
    sig = Signature.parse(entry["signature"])
    assert str(sig) == entry["signature"]
    assert pub.verify(entry["fingerprint"], sig) is entry["expected_valid"]
    assert verify_any(entry["fingerprint"], [sig], [pub]) is entry["expected_valid"]
    # the raw ed25519 result: the same signature bytes under the key's own name
    renamed = Signature(pub.name, sig.data)
    assert pub.verify(entry["fingerprint"], renamed) is entry["expected_valid_ignoring_key_name"]


@pytest.mark.parametrize("entry", SIGNATURE_PARSES, ids=_ids(SIGNATURE_PARSES, "signature"))
def test_invalid_signature_rejected(entry: dict[str, Any]) -> None:
    assert entry["valid"] is False
    with pytest.raises(InvalidSignature):
        Signature.parse(entry["signature"])


@pytest.mark.parametrize("entry", PUBLIC_KEY_PARSES, ids=_ids(PUBLIC_KEY_PARSES, "public_key"))
def test_invalid_public_key_rejected(entry: dict[str, Any]) -> None:
    assert entry["valid"] is False
    with pytest.raises(InvalidKey):
        VerifyingKey.parse(entry["public_key"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key name"),
        ("nocolon", "no key name"),
        (":" + "A" * 43 + "=", "empty key name"),
        ("a b:" + "A" * 43 + "=", "forbidden character"),
        ("a\tb:" + "A" * 43 + "=", "forbidden character"),
        ("k:" + "A" * 43, "invalid base64"),
        ("k:" + "A" * 44 + "==", "base64"),
        ("k:" + "B" * 43 + "=", "non-canonical"),
        ("k:" + "A" * 40 + "====", "base64"),
        ("k:" + "A" * 40, "decodes to 30 bytes, expected 32"),
        ("k:" + "A" * 42 + "*=", "invalid base64"),
        ("k:x:" + "A" * 43 + "=", "invalid base64"),
        (b"k\xff:" + b"A" * 43 + b"=", "not ASCII"),
    ],
)
def test_public_key_errors_name_the_problem(text: str | bytes, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        VerifyingKey.parse(text)


def test_signature_errors_name_the_problem() -> None:
    with pytest.raises(InvalidSignature, match="decodes to 32 bytes, expected 64"):
        Signature.parse("k:" + base64.b64encode(bytes(32)).decode())
    with pytest.raises(InvalidSignature, match="'sig-\\\\n'"):
        Signature("sig-\n", bytes(64))
    with pytest.raises(InvalidSignature, match="has 63 bytes"):
        Signature("k", bytes(63))


def test_secret_key_parse_accepts_the_key_file_newline() -> None:
    assert str(SigningKey.parse(SECRET + "\n")) == SECRET
    assert str(SigningKey.parse(SECRET.encode())) == SECRET


@pytest.mark.parametrize(
    "corrupt",
    [
        # public half does not match the seed
        lambda s: s[:50] + ("A" if s[50] != "A" else "B") + s[51:],
        # wrong length: only the seed
        lambda s: (
            s.partition(":")[0]
            + ":"
            + base64.b64encode(base64.b64decode(_secret_b64(s))[:32]).decode()
        ),
        # padding dropped
        lambda s: s.rstrip("="),
        # a byte that is not base64
        lambda s: s[:30] + "!" + s[31:],
        # no name
        lambda s: _secret_b64(s),
        # empty name
        lambda s: ":" + _secret_b64(s),
    ],
    ids=["public-half-mismatch", "seed-only", "no-padding", "bad-char", "no-name", "empty-name"],
)
def test_secret_key_errors_never_echo_the_secret(corrupt: Any) -> None:
    text = corrupt(SECRET)
    with pytest.raises(InvalidKey) as info:
        SigningKey.parse(text)
    message = str(info.value)
    seed_b64 = base64.b64encode(base64.b64decode(_secret_b64(SECRET))[:32]).decode()
    for secret_part in (_secret_b64(text), _secret_b64(SECRET)[:20], seed_b64[:20], text[:44]):
        assert not secret_part or secret_part not in message


def test_signing_key_repr_hides_the_seed() -> None:
    key = SigningKey.parse(SECRET)
    assert _secret_b64(SECRET)[:20] not in repr(key)
    assert key.seed.hex() not in repr(key)
    assert repr(key.seed) not in repr(key)
    assert "vector-test-1" in repr(key)


def test_generate_sign_verify() -> None:
    key = SigningKey.generate("gen-1")
    pub = key.to_public()
    sig = key.sign("1;/nix/store/x;sha256:y;1;")
    assert sig.name == "gen-1"
    assert pub.verify("1;/nix/store/x;sha256:y;1;", sig)
    assert not pub.verify("1;/nix/store/x;sha256:y;2;", sig)
    assert SigningKey.parse(str(key)) == key
    assert SigningKey.generate("gen-1") != key


def test_verify_any_needs_name_and_key() -> None:
    a, b = SigningKey.parse(KEYPAIRS[0]["secret_key"]), SigningKey.parse(KEYPAIRS[1]["secret_key"])
    fp = "1;/nix/store/a;sha256:b;5;"
    sig_a = a.sign(fp)
    assert verify_any(fp, [sig_a], [b.to_public(), a.to_public()])
    assert not verify_any(fp, [sig_a], [b.to_public()])
    assert not verify_any(fp, [], [a.to_public()])
    assert not verify_any(fp, [sig_a], [])
    # same name, different key material: not trusted
    impostor = VerifyingKey(a.name, b.to_public().key)
    assert not verify_any(fp, [sig_a], [impostor])
    # a generator of keys is consumed once but checked against every signature
    assert verify_any(fp, [b.sign("other"), sig_a], (k for k in [a.to_public()]))


_NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=":", exclude_categories=["Z", "C"]),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(name=_NAMES, seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_round_trips(name: str, seed: bytes, message: bytes) -> None:
    key = SigningKey(name, seed)
    assert SigningKey.parse(str(key)) == key
    pub = key.to_public()
    assert VerifyingKey.parse(str(pub)) == pub
    sig = key.sign(message)
    assert Signature.parse(str(sig)) == sig
    assert pub.verify(message, sig)
    assert not pub.verify(message + b"x", sig)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=120), st.binary(max_size=120)))
def test_parsers_raise_only_typed_errors(text: str | bytes) -> None:
    for parse in (Signature.parse, VerifyingKey.parse, SigningKey.parse):
        with contextlib.suppress(NixCompatError):
            parse(text)
