"""Keys, signatures and narinfos differentially against the real Nix 2.8.

One module-scoped fixture does all the Nix work in a few batched calls:

* ``nix key generate-secret`` / ``convert-secret-to-public`` for a Nix key,
  and the same conversion (plus ``nix store sign``) for a key of ours;
* fresh store paths (a nonce makes them new on every run): a file added with
  ``nix-store --add``, ``builtins.toFile`` texts with references, and
  input-addressed outputs of trivial ``/bin/sh`` builds (with a deriver,
  references and a self reference);
* ``nix store sign`` with both keys, ``nix path-info --json --sigs``;
* ``nix copy`` to ``file://`` caches with ``compression=none`` (unsigned) and
  ``compression=xz&secret-key=…``;
* the reverse direction: caches whose narinfos carry *our* signatures (good
  ones and ones over a wrong fingerprint), judged by ``nix store verify``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nixcompat.hash import NixHash
from nixcompat.narinfo import NarInfo, fingerprint
from nixcompat.signing import Signature, SigningKey, VerifyingKey
from nixcompat.storepath import StorePath
from tests.conftest import require_tool

pytestmark = pytest.mark.nix

NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout + (proc.stderr if not check else "")


@dataclass(frozen=True)
class NixWorld:
    nix_secret: str
    nix_public: str
    ours: SigningKey
    ours_public_by_nix: str
    ours_signed_by_nix: dict[str, str]  # path -> Sig Nix made with our key
    paths: list[str]
    path_infos: dict[str, dict[str, Any]]  # path -> nix path-info --json --sigs entry
    cache_none: Path
    cache_xz: Path
    verify_good: subprocess.CompletedProcess[str]
    verify_bad: subprocess.CompletedProcess[str]
    verify_untrusted_key: subprocess.CompletedProcess[str]
    reread: dict[str, dict[str, Any]]  # path-info --store <our cache> --json --sigs


def _narinfo_file(cache: Path, path: str) -> Path:
    return cache / (StorePath.from_absolute_path(path).hash_part + ".narinfo")


def _make_paths(tmp: Path, nonce: str) -> list[str]:
    added = tmp / f"added-{nonce}.txt"
    added.write_text(f"added {nonce}\n")
    file_path = _run(["nix-store", "--add", str(added)]).strip()
    prelude = f"""
      let
        a = builtins.toFile "a-{nonce}" "a";
        b = builtins.toFile "b-{nonce}" "b";
        text = builtins.toFile "text-{nonce}" "${{b}} ${{a}}";
        mk = name: script: derivation {{
          inherit name;
          system = builtins.currentSystem;
          builder = "/bin/sh";
          args = [ "-c" script ];
          nonce = "{nonce}";
        }};
        leaf = mk "leaf" "echo leaf > $out";
        top = mk "top" "echo ${{leaf}} ${{b}} ${{a}} > $out";
        self = mk "selfref" "echo ${{leaf}} $out > $out";
      in
    """
    (tmp / "paths.nix").write_text(prelude + "[ leaf top self ]")
    evaluated = [*NIX, "eval", "--raw", "--expr", prelude + "text"]
    text_path = _run(evaluated).strip()
    outputs = _run(
        ["nix-build", "--no-out-link", "--option", "substituters", "", str(tmp / "paths.nix")]
    ).split()
    return [file_path, text_path, *outputs]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> NixWorld:
    require_tool("nix")
    require_tool("nix-store")
    require_tool("nix-build")
    tmp = tmp_path_factory.mktemp("nixsign")
    nonce = secrets.token_hex(6)

    nix_secret = _run([*NIX, "key", "generate-secret", "--key-name", "test-1"])
    (tmp / "nix.sk").write_text(nix_secret)
    nix_public = _run([*NIX, "key", "convert-secret-to-public"], stdin=nix_secret)

    ours = SigningKey.generate("ours-1")
    (tmp / "ours.sk").write_text(str(ours))
    ours_public_by_nix = _run([*NIX, "key", "convert-secret-to-public"], stdin=str(ours))

    paths = _make_paths(tmp, nonce)
    cache_none, cache_xz = tmp / "cache-none", tmp / "cache-xz"
    # copy before signing, so that the unsigned cache has no signatures at all
    _run([*NIX, "copy", "--to", f"file://{cache_none}?compression=none", *paths])
    _run([*NIX, "store", "sign", "--key-file", str(tmp / "ours.sk"), *paths])
    infos = json.loads(_run([*NIX, "path-info", "--json", "--sigs", *paths]))
    ours_signed_by_nix = {
        i["path"]: next(s for s in i.get("signatures", []) if s.startswith("ours-1:"))
        for i in infos
    }
    _run([*NIX, "store", "sign", "--key-file", str(tmp / "nix.sk"), *paths])
    infos = json.loads(_run([*NIX, "path-info", "--json", "--sigs", *paths]))
    _run(
        [*NIX, "copy", "--to", f"file://{cache_xz}?compression=xz&secret-key={tmp}/nix.sk", *paths]
    )

    # The reverse direction: our signatures in narinfos that Nix judges.  CA lines are
    # dropped, since Nix trusts content-addressed paths without any signature.
    good, bad = tmp / "cache-ours-good", tmp / "cache-ours-bad"
    for cache in (good, bad):
        shutil.copytree(cache_none, cache)
    for path in paths:
        info = dataclasses.replace(
            NarInfo.parse(_narinfo_file(cache_none, path).read_text()), ca=None
        )
        _narinfo_file(good, path).write_text(info.signed(ours).render())
        wrong = dataclasses.replace(info, nar_size=info.nar_size + 1).fingerprint()
        _narinfo_file(bad, path).write_text(info.with_signature(ours.sign(wrong)).render())

    def verify(cache: Path, key: str) -> subprocess.CompletedProcess[str]:
        args = [*NIX, "store", "verify", "--store", f"file://{cache}", "--no-contents"]
        return subprocess.run(
            [*args, "--trusted-public-keys", key, *paths],
            capture_output=True,
            text=True,
            timeout=60,
        )

    reread = json.loads(
        _run([*NIX, "path-info", "--store", f"file://{good}", "--json", "--sigs", *paths])
    )
    return NixWorld(
        nix_secret=nix_secret,
        nix_public=nix_public,
        ours=ours,
        ours_public_by_nix=ours_public_by_nix,
        ours_signed_by_nix=ours_signed_by_nix,
        paths=paths,
        path_infos={i["path"]: i for i in infos},
        cache_none=cache_none,
        cache_xz=cache_xz,
        verify_good=verify(good, str(ours.to_public())),
        verify_bad=verify(bad, str(ours.to_public())),
        verify_untrusted_key=verify(good, nix_public),
        reread={i["path"]: i for i in reread},
    )


def _fingerprint_of(info: dict[str, Any]) -> str:
    return fingerprint(
        StorePath.from_absolute_path(info["path"]),
        NixHash.parse(info["narHash"]),
        info["narSize"],
        [StorePath.from_absolute_path(r) for r in info["references"]],
    )


def test_the_paths_cover_references_derivers_and_ca(world: NixWorld) -> None:
    infos = world.path_infos.values()
    assert len(infos) == 5
    assert sum(1 for i in infos if len(i["references"]) >= 2) >= 2
    assert any(i["path"] in i["references"] for i in infos)  # self reference
    assert sum(1 for i in infos if "deriver" in i) == 3
    assert sum(1 for i in infos if "ca" in i) == 2


def test_nix_generated_key_parses(world: NixWorld) -> None:
    key = SigningKey.parse(world.nix_secret)
    assert key.name == "test-1"
    assert str(key) == world.nix_secret.strip()
    assert str(key.to_public()) == world.nix_public.strip()
    assert VerifyingKey.parse(world.nix_public.strip()) == key.to_public()


def test_nix_converts_our_key_like_we_do(world: NixWorld) -> None:
    assert world.ours_public_by_nix.strip() == str(world.ours.to_public())


def test_nix_signatures_verify_with_our_fingerprint(world: NixWorld) -> None:
    nix_key = VerifyingKey.parse(world.nix_public.strip())
    for path, info in world.path_infos.items():
        sigs = [Signature.parse(s) for s in info["signatures"]]
        nix_sigs = [s for s in sigs if s.name == "test-1"]
        assert len(nix_sigs) == 1, path
        fp = _fingerprint_of(info)
        assert nix_key.verify(fp, nix_sigs[0]), (path, fp)
        assert not nix_key.verify(fp + "x", nix_sigs[0])


def test_nix_signs_exactly_like_us(world: NixWorld) -> None:
    """ed25519 is deterministic: Nix's signature with our key is byte-identical to ours."""
    for path, sig in world.ours_signed_by_nix.items():
        assert str(world.ours.sign(_fingerprint_of(world.path_infos[path]))) == sig


@pytest.mark.parametrize("compression", ["none", "xz"])
def test_nix_copy_narinfos_round_trip_and_verify(world: NixWorld, compression: str) -> None:
    cache = world.cache_none if compression == "none" else world.cache_xz
    nix_key = VerifyingKey.parse(world.nix_public.strip())
    for path in world.paths:
        text = _narinfo_file(cache, path).read_text()
        info = NarInfo.parse(text)
        assert info.render() == text
        assert info.compression == compression
        pi = world.path_infos[path]
        assert info.fingerprint() == _fingerprint_of(pi)
        assert info.nar_hash == NixHash.parse(pi["narHash"])
        assert sorted(r.absolute for r in info.references) == sorted(pi["references"])
        assert info.deriver == (
            StorePath.from_absolute_path(pi["deriver"]) if "deriver" in pi else None
        )
        assert (str(info.ca) if info.ca else None) == pi.get("ca")
        if compression == "none":
            assert info.signatures == ()
            assert not info.verify([nix_key])
        else:
            assert info.verify([nix_key])
            assert {str(s) for s in info.signatures} == set(pi["signatures"])


def test_nix_accepts_our_signatures(world: NixWorld) -> None:
    good = world.verify_good
    assert good.returncode == 0, good.stderr
    assert "untrusted" not in good.stderr


def test_nix_rejects_our_signature_over_a_wrong_fingerprint(world: NixWorld) -> None:
    bad = world.verify_bad
    assert bad.returncode != 0
    for path in world.paths:
        assert f"path '{path}' is untrusted" in bad.stderr


def test_nix_wants_the_trusted_key_not_just_any_signature(world: NixWorld) -> None:
    other = world.verify_untrusted_key
    assert other.returncode != 0
    assert all(f"path '{p}' is untrusted" in other.stderr for p in world.paths)


def test_nix_reads_our_rendered_narinfos_back(world: NixWorld) -> None:
    for path in world.paths:
        theirs, reread = world.path_infos[path], world.reread[path]
        for field in ("narHash", "narSize", "references", "deriver"):
            assert reread.get(field) == theirs.get(field), (path, field)
        assert str(world.ours.sign(_fingerprint_of(theirs))) in reread["signatures"]
