"""Batch lines: streaming split, input checks, output format; and disk file storage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.batches.files import CHUNK_BYTES, DiskContent
from broker.batches.lines import (
    InputLine,
    LineError,
    answer_of,
    output_line,
    parse_line,
    split_lines,
)
from broker.errors import PayloadTooLarge
from schemas import ErrorInfo, InferenceResult, RequestStatus

MODELS = frozenset({"m"})
GOOD = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_split_lines_across_chunks_keeps_numbers() -> None:
    got = [(n, raw) async for n, raw in split_lines(_chunks(b'{"a"', b':1}\n\n{"b":2}\n', b"x"))]
    assert got == [(1, b'{"a":1}'), (3, b'{"b":2}'), (4, b"x")]


def _parse(**changes: object) -> InputLine | LineError:
    return parse_line(7, json.dumps({**GOOD, **changes}).encode(), "/v1/chat/completions", MODELS)


def test_parse_line_accepts_a_good_line() -> None:
    parsed = _parse()
    assert isinstance(parsed, InputLine) and parsed.body is not None and parsed.line == 7


@pytest.mark.parametrize(("changes", "code", "param"), [
    ({"url": "/v1/embeddings"}, "mismatched_endpoint", "url"),
    ({"custom_id": ""}, "missing_required_parameter", "custom_id"),
    ({"method": "GET"}, "invalid_method", "method"),
    ({"body": None}, "missing_required_parameter", "body"),
])
def test_structural_problems_fail_the_batch(changes: dict[str, object], code: str,
                                            param: str) -> None:
    parsed = _parse(**changes)
    assert isinstance(parsed, LineError)
    assert parsed.body() == {"code": code, "line": 7, "message": parsed.message, "param": param}


def test_not_json_is_a_line_error() -> None:
    parsed = parse_line(3, b"{nope", "/v1/chat/completions", MODELS)
    assert isinstance(parsed, LineError) and parsed.code == "invalid_json_line"


@pytest.mark.parametrize("body", [{"model": "other", "messages": [{"role": "user"}]},
                                  {"model": "m", "messages": []}])
def test_bad_bodies_go_to_the_error_file(body: dict[str, object]) -> None:
    parsed = _parse(body=body)
    assert isinstance(parsed, InputLine) and parsed.body is None and parsed.problem


def _result(status: RequestStatus, error: ErrorInfo | None = None) -> InferenceResult:
    now = datetime.now(UTC)
    return InferenceResult(request_id="batch_req_x_1", model="m", status=status, error=error,
                           created_at=now, finished_at=now)


def test_output_lines_in_openai_format() -> None:
    status, code, body = answer_of(_result(RequestStatus.FAILED, ErrorInfo(
        type="invalid_request_error", message="no")))
    assert (status, code) == ("failed", 400) and body is not None
    line = json.loads(output_line("batch_req_x_1", "r1", status, code, body))
    assert line == {"id": "batch_req_x_1", "custom_id": "r1", "error": None,
                    "response": {"status_code": 400, "request_id": "batch_req_x_1",
                                 "body": body}}
    status, code, body = answer_of(_result(RequestStatus.CANCELLED))
    line = json.loads(output_line("batch_req_x_1", "r1", status, code, body))
    assert line["response"] is None and line["error"]["code"] == "batch_cancelled"


async def test_disk_content_streams_and_enforces_the_limit(tmp_path: Path) -> None:
    store = DiskContent(tmp_path / "files")
    data = b"x" * (CHUNK_BYTES * 2 + 10)
    assert await store.write("f1", _chunks(data[:5], data[5:]), limit=len(data)) == len(data)
    chunks = [chunk async for chunk in store.read("f1")]
    assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK_BYTES
    with pytest.raises(PayloadTooLarge):
        await store.write("f2", _chunks(data), limit=100)
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["f1"]
    await store.delete("f1")
    assert [chunk async for chunk in store.read("f1")] == []
