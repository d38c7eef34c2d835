"""The call file: one intact JSON line per call, whatever the number of writers."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from aifixer.callfile import (
    CallContext,
    CallFile,
    claim,
    finished_record,
    load_answer,
    load_call_context,
    release,
    store_answer,
    store_call_context,
)
from aifixer.models import CallRecord

WRITERS = 8
LINES_PER_WRITER = 60
LONG_SPEECH = "The checkout deployment keeps crashing after the last release. " * 80  # > PIPE_BUF


def record(n: int = 0, **overrides) -> CallRecord:
    fields = {
        "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "number": "+33612345678",
        "speech": f"call {n}: {LONG_SPEECH}",
        "can_intervene": n % 2 == 0,
        "fingerprint": f"fp{n}",
        "status": "completed",
        "call_sid": f"CA{n:032x}",
        "attempt": 1,
        "answer_text": "Yes.",
    }
    return CallRecord(**(fields | overrides))


def test_append_writes_one_json_line_per_call(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calls.jsonl"
    calls = CallFile(path)
    calls.append(record(1))
    calls.append(record(2, can_intervene=False, answer_text=None, status="no-answer"))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line is terminated
    first = json.loads(lines[0])
    assert list(first) == [
        "time", "number", "speech", "can_intervene", "fingerprint",
        "status", "call_sid", "attempt", "answer_text", "incident_id",
    ]  # fmt: skip
    assert first["time"] == "2026-01-02T03:04:05Z"
    assert first["can_intervene"] is False and first["number"] == "+33612345678"
    assert [r.fingerprint for r in calls.read()] == ["fp1", "fp2"]


def test_time_is_written_in_utc(tmp_path: Path) -> None:
    paris = timezone(timedelta(hours=1))
    calls = CallFile(tmp_path / "calls.jsonl")
    calls.append(record(time=datetime(2026, 1, 2, 4, 4, 5, tzinfo=paris)))
    assert json.loads((tmp_path / "calls.jsonl").read_text())["time"] == "2026-01-02T03:04:05Z"


def test_naive_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CallFile(tmp_path / "calls.jsonl").append(record(time=datetime(2026, 1, 2)))
    assert not (tmp_path / "calls.jsonl").exists()


def test_read_missing_file_is_empty(tmp_path: Path) -> None:
    assert CallFile(tmp_path / "none.jsonl").read() == []


def test_read_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    calls = CallFile(path)
    calls.append(record(1))
    whole = record(2).model_dump_json()
    with path.open("a") as f:
        f.write(whole[: len(whole) // 2])  # a writer killed mid-line
    assert [r.fingerprint for r in calls.read()] == ["fp1"]
    calls.append(record(3))  # the next append starts a line of its own: never lost
    assert [r.fingerprint for r in calls.read()] == ["fp1", "fp3"]
    calls.append(record(4))
    assert [r.fingerprint for r in calls.read()] == ["fp1", "fp3", "fp4"]
    assert path.read_bytes().endswith(b"\n")


def test_read_refuses_json_that_is_not_a_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text('{"hello": "world"}\n')
    with pytest.raises(ValueError, match=r"calls.jsonl:1: not a call record"):
        CallFile(path).read()


def _writer(path: str, writer: int, start: multiprocessing.Event) -> None:
    start.wait(10)
    calls = CallFile(path)
    for i in range(LINES_PER_WRITER):
        calls.append(record(writer * 1000 + i))


@pytest.mark.timeout(120)
def test_many_processes_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited locks or fds
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == WRITERS * LINES_PER_WRITER
    parsed = [CallRecord.model_validate_json(line) for line in lines]  # every line intact
    expected = {w * 1000 + i for w in range(WRITERS) for i in range(LINES_PER_WRITER)}
    assert {int(r.fingerprint[2:]) for r in parsed} == expected
    assert all(r.speech.endswith(LONG_SPEECH) for r in parsed)
    assert len(CallFile(path).read()) == len(lines)


class FakeRedis:
    """The four Redis commands the call context uses, with their semantics."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key, value, ex=None, nx=False):
        if nx and key in self.data:
            return None
        self.data[key] = value.encode() if isinstance(value, str) else value
        return True

    def get(self, key):
        return self.data.get(key)

    def delete(self, key):
        self.data.pop(key, None)


def test_call_context_round_trip_and_finished_record() -> None:
    redis = FakeRedis()
    context = CallContext(
        incident_id="abc-1", fingerprint="abc", attempt=2, number="+15551230000", speech="Hello.",
        time=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    store_call_context(redis, context)
    assert load_call_context(redis, "abc-1", 2) == context
    assert load_call_context(redis, "abc-1", 1) is None
    assert load_answer(redis, "CA1") == (None, None)
    store_answer(redis, "CA1", False, "Non.")
    done = finished_record(context, "CA1", "completed", *load_answer(redis, "CA1"))
    assert (done.can_intervene, done.answer_text, done.attempt, done.number) == (
        False, "Non.", 2, "+15551230000",
    )  # fmt: skip
    assert (done.incident_id, done.fingerprint) == ("abc-1", "abc")
    silent = finished_record(context, "CA2", "no-answer", None, None)
    assert silent.can_intervene is False and silent.status == "no-answer"
    assert finished_record(context, "CA3", "completed", True, "1").can_intervene is True


def test_claim_once_and_release() -> None:
    redis = FakeRedis()
    assert claim(redis, "CA1", "written") is True
    assert claim(redis, "CA1", "written") is False
    assert claim(redis, "CA1", "reported") is True
    release(redis, "CA1", "written")
    assert claim(redis, "CA1", "written") is True
