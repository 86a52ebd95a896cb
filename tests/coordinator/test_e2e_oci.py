"""End to end with the real tools: nix-instantiate evaluates, runc builds, Nix is the reference.

A DAG with two outputs, flat and recursive fixed outputs, passAsFile,
references through files and symlinks is evaluated, built by the OCI
builder and pushed.  The store paths must be those nix-instantiate gives;
every path info must carry the NAR hash and size of ``nix-store --dump`` of
the same derivation built by Nix, Nix's references, the deriver, the content
address of fixed outputs and a valid signature.  A second submit is answered
from lookup alone.
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import pytest

from nixcompat.narinfo import ContentAddress
from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath
from proto.gen.tvixd import v1 as tvixd_pb
from tests.conftest import require_tool
from tests.coordinator.harness import Stores, running
from tests.coordinator.helpers import assert_gapless, body, drv_states, job_states, log_lines
from tests.coordinator.nixfiles import (
    dag_nix,
    instantiate,
    nix_build,
    nix_nar_sha256,
    nix_references,
    show_derivations,
)
from tvixd.build.oci.service import OciBuildService

pytestmark = [pytest.mark.nix, pytest.mark.runc, pytest.mark.slow, pytest.mark.asyncio]

ATTRS = ("top", "leaf", "multi", "fixedflat", "fixedrec", "pass")


async def test_dag_built_by_runc_matches_nix(tmp_path: Path) -> None:
    require_tool("runc")
    nix = dag_nix(tmp_path)
    drvs = dict(zip(ATTRS, instantiate(nix, *ATTRS), strict=True))
    shown = show_derivations(list(drvs.values()))
    # The reference: the same derivations built by Nix (cached in /nix/store after a first run).
    await anyio.to_thread.run_sync(nix_build, list(drvs.values()))

    key = SigningKey.generate("tvixd-e2e-1")
    stores = Stores()
    builder = await OciBuildService.open(tmp_path / "builds", stores.blobs, stores.directories)
    try:
        async with running(tmp_path, builder=builder, stores=stores, signing_key=key) as env:
            job = await env.submit_file(nix, "top")
            events = await env.events(job.id, within=100)
            assert_gapless(events)
            assert job_states(events)[-1] == "succeeded", events[-1]
            assert set(drv_states(events)) == {
                "top", "leaf", "multi", "fixed-flat", "fixed-rec", "pass",
            }  # fmt: skip
            assert b"building leaf" in log_lines(events)
            seen = {
                v.drv_path
                for _, v in map(body, events)
                if isinstance(v, tvixd_pb.DerivationStateChanged)
            }
            assert seen == set(drvs.values())  # the .drv paths nix-instantiate gives
            final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
            top_out = shown[drvs["top"]]["outputs"]["out"]["path"]  # type: ignore[index]
            assert [(o.drv_path, o.path) for o in final.outputs] == [(drvs["top"], top_out)]

            checked = 0
            for drv_path, drv in shown.items():
                if drv_path not in drvs.values():
                    continue
                for output in drv["outputs"].values():  # type: ignore[attr-defined]
                    path = output["path"]
                    info = await env.stores.pathinfos.get(StorePath.from_absolute_path(path).digest)
                    assert info is not None, path
                    size, sha256 = await anyio.to_thread.run_sync(nix_nar_sha256, path)
                    assert (info.nar_size, info.nar_sha256) == (size, sha256), path
                    refs = await anyio.to_thread.run_sync(nix_references, path)
                    assert sorted(r.absolute for r in info.references) == refs, path
                    assert info.deriver is not None
                    assert info.deriver.absolute == drv_path
                    if "hash" in output:
                        method = "r:" if output["hashAlgo"].startswith("r:") else ""
                        assert info.ca == ContentAddress.parse(
                            f"fixed:{method}sha256:{_nixbase32_of_hex(output['hash'])}"
                        )
                    else:
                        assert info.ca is None
                    (signature,) = info.signatures
                    assert key.to_public().verify(info.fingerprint(), signature)
                    checked += 1
            assert checked == 7  # multi has two outputs

            # FollowLog after the fact: the stored log of a build.
            lines = [
                line.line
                async for line in env.stub.follow_log(
                    tvixd_pb.FollowLogRequest(drv_path=drvs["multi"], follow=True)
                )
            ]
            assert b"built multi" in lines

            again = await env.submit_file(nix, "top")
            events = await env.events(again.id)
            assert drv_states(events) == {"top": ["lookup", "done"]}
    finally:
        await builder.close()


def _nixbase32_of_hex(hex_digest: str) -> str:
    from nixcompat import nixbase32

    return nixbase32.encode(bytes.fromhex(hex_digest))
