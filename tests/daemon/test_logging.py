"""Structured logs: key=value and JSON, context from log_context and extra=."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from tvixd.logging import log_context, setup_logging


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """Root logging into a buffer; restores the root logger afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(saved[0])
    for handler in saved[1]:
        root.addHandler(handler)


def test_text_format(capture: io.StringIO) -> None:
    buffer = capture
    setup_logging("info", "text", buffer)
    log = logging.getLogger("tvixd.test")
    with log_context(job="j-1", drv="/nix/store/aaaa-x.drv"):
        log.info("building %s", "x", extra={"attempt": 2})
        with log_context(digest="ab12"):
            log.warning('quote " and space')
    log.debug("hidden")
    first, second = buffer.getvalue().splitlines()
    assert first.startswith("time=")
    assert first.endswith(
        'level=info logger=tvixd.test msg="building x" attempt=2 drv=/nix/store/aaaa-x.drv job=j-1'
    )
    assert 'msg="quote \\" and space" digest=ab12 drv=/nix/store/aaaa-x.drv job=j-1' in second


def test_json_format_and_exceptions(capture: io.StringIO) -> None:
    buffer = capture
    setup_logging("debug", "json", buffer)
    log = logging.getLogger("tvixd.test")
    with log_context(job="j-2"):
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed", extra={"path": object.__name__})
    record = json.loads(buffer.getvalue())
    assert record["level"] == "error"
    assert record["msg"] == "failed"
    assert record["job"] == "j-2"
    assert record["path"] == "object"
    assert "ValueError: bad" in record["exc"]
    assert list(record)[:4] == ["time", "level", "logger", "msg"]


def test_setup_replaces_its_own_handler(capture: io.StringIO) -> None:
    buffer = capture
    setup_logging("info", "text", io.StringIO())
    setup_logging("info", "json", buffer)
    logging.getLogger("tvixd").info("once")
    assert len(buffer.getvalue().splitlines()) == 1


@pytest.mark.asyncio
async def test_context_is_per_task(capture: io.StringIO) -> None:
    buffer = capture
    setup_logging("info", "json", buffer)
    log = logging.getLogger("tvixd.test")

    async def job(name: str) -> None:
        with log_context(job=name):
            await anyio.lowlevel.checkpoint()
            log.info("step")

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            tg.start_soon(job, name)
    log.info("outside")
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert sorted(r.get("job", "-") for r in records) == ["-", "a", "b", "c"]
