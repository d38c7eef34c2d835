"""The call file, and what the farm remembers about a call while it is ringing.

The call file is the durable answer to "who did we phone, what did we tell them and
what did they say": JSON Lines, one `CallRecord` per call. Many processes append to it
at once (every `aifixer web` replica, every worker), so each line goes down in ONE
`os.write` on an `O_APPEND` descriptor under an exclusive `flock`, then `fsync`: lines
never interleave, and a line reported written survives a crash. A process killed
mid-write can still leave a torn line; `read()` skips it with a warning instead of
losing the whole file.

A call's outcome arrives later, over HTTP, to whichever web replica Twilio reaches.
The context that line needs (number, speech, when, which incident and attempt) is kept
in Redis, stored by the caller BEFORE dialling and keyed by (incident id, attempt):
both travel in the signed callback URLs, so a status callback can never arrive for a
call whose context is not yet stored, however fast the call fails. The heard answer
is kept by CallSid, and a `SET NX` claim per CallSid makes the line exactly-once even
though Twilio may deliver a status callback more than once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aifixer.models import CallRecord, Record

log = logging.getLogger(__name__)

KEY_PREFIX = "aifixer:call"
CONTEXT_TTL_S = 7 * 24 * 3600  # a call ends within minutes; a week covers any callback retry


class CallFile:
    """Append-only JSON Lines file of `CallRecord`s, safe from many processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def append(self, record: CallRecord) -> None:
        """Write one line for `record`, atomically with respect to other appenders.

        Raises:
            ValueError: the record's time is not timezone-aware (it must be UTC).
            OSError: the file cannot be written.
        """
        append_line(self.path, _to_line(record))

    def read(self) -> list[CallRecord]:
        """Every call recorded, oldest first; an empty list if the file does not exist.

        A line that is not JSON is a write torn by a crash: it is skipped with a warning.

        Raises:
            ValueError: a line is JSON but not a call record (a foreign or damaged file).
        """
        try:
            with self.path.open("rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # never read half of a line being written
                data = f.read()
        except FileNotFoundError:
            return []
        records = []
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                fields = json.loads(raw)
            except ValueError:
                log.warning("%s:%d: skipping a torn line (%d bytes)", self.path, number, len(raw))
                continue
            try:
                records.append(CallRecord.model_validate(fields))
            except ValidationError as exc:
                raise ValueError(f"{self.path}:{number}: not a call record: {exc}") from None
        return records


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line to a JSON Lines file, atomically among appenders.

    If the file ends in a torn line (a writer killed mid-write, a full disk), the new
    line starts on a line of its own: the torn fragment stays a fragment that readers
    skip, and the record appended after it is never glued to it and lost.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            # A regular file takes the whole line at once in practice; should it not,
            # the rest still lands contiguously because every appender holds the lock.
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _to_line(record: CallRecord) -> bytes:
    if record.time.tzinfo is None:
        raise ValueError(f"call time must be timezone-aware UTC, got naive {record.time}")
    utc = record.model_copy(update={"time": record.time.astimezone(UTC)})
    return utc.model_dump_json().encode() + b"\n"


# ---------------------------------------------------------------------------
# The call while it rings: Redis


class CallContext(Record):
    """What is known about a call before its outcome: stored by whoever dials."""

    incident_id: str  # the incident the call is about
    fingerprint: str  # its failure (workload and class)
    attempt: int  # 1 for the first number called, 2 for the next...
    number: str
    speech: str  # what the call says
    time: datetime  # when the call was placed (UTC)
    call_sid: str | None = None  # known once Twilio accepted the call


def _context_key(incident_id: str, attempt: int) -> str:
    return f"{KEY_PREFIX}:{incident_id}:{attempt}"


def store_call_context(redis: Any, context: CallContext) -> None:
    """Remember a call before dialling (and again once its CallSid is known)."""
    redis.set(
        _context_key(context.incident_id, context.attempt),
        context.model_dump_json(),
        ex=CONTEXT_TTL_S,
    )


def load_call_context(redis: Any, incident_id: str, attempt: int) -> CallContext | None:
    raw = redis.get(_context_key(incident_id, attempt))
    return None if raw is None else CallContext.model_validate_json(raw)


def store_answer(redis: Any, call_sid: str, answer: bool | None, answer_text: str | None) -> None:
    """The reply heard on `call_sid` (None: silence or unclear)."""
    value = json.dumps({"answer": answer, "answer_text": answer_text})
    redis.set(f"{KEY_PREFIX}:{call_sid}:answer", value, ex=CONTEXT_TTL_S)


def load_answer(redis: Any, call_sid: str) -> tuple[bool | None, str | None]:
    """(answer, answer_text) heard on `call_sid`, (None, None) if nothing was heard."""
    raw = redis.get(f"{KEY_PREFIX}:{call_sid}:answer")
    if raw is None:
        return None, None
    stored = json.loads(raw)
    return stored["answer"], stored["answer_text"]


def claim(redis: Any, call_sid: str, step: str) -> bool:
    """True for the first caller only: makes `step` for `call_sid` happen once."""
    return bool(redis.set(f"{KEY_PREFIX}:{call_sid}:{step}", "1", nx=True, ex=CONTEXT_TTL_S))


def release(redis: Any, call_sid: str, step: str) -> None:
    """Undo `claim` when the step failed, so a retried callback can do it."""
    redis.delete(f"{KEY_PREFIX}:{call_sid}:{step}")


def finished_record(
    context: CallContext, call_sid: str, status: str, answer: bool | None, answer_text: str | None
) -> CallRecord:
    """The call file line for a call that ended with Twilio status `status`."""
    return CallRecord(
        time=context.time,
        number=context.number,
        speech=context.speech,
        can_intervene=answer is True,
        fingerprint=context.fingerprint,
        incident_id=context.incident_id,
        status=status,
        call_sid=call_sid,
        attempt=context.attempt,
        answer_text=answer_text,
    )


FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


def finish_call(
    redis: Any,
    call_file: CallFile,
    incident_id: str,
    attempt: int,
    call_sid: str,
    status: str,
    on_finished: Callable[[str, CallRecord], None],
) -> bool:
    """A call ended with Twilio status `status`: write its line once, report it once.

    Called by whoever learns first that the call ended — the status callback on any
    web replica, or the escalation watchdog asking Twilio when a callback never came.
    Returns True if the line was written now.
    """
    context = load_call_context(redis, incident_id, attempt)
    if context is None:
        log.warning("[%s] call %s (attempt %d) ended %s but is unknown: not recorded",
                    incident_id, call_sid, attempt, status)  # fmt: skip
        return False
    answer, answer_text = load_answer(redis, call_sid)
    record = finished_record(context, call_sid, status, answer, answer_text)
    written = claim(redis, call_sid, "written")
    if written:
        try:
            call_file.append(record)
        except BaseException:
            release(redis, call_sid, "written")
            raise
        log.info("[%s] call %s to attempt %d ended %s, can intervene: %s",
                 incident_id, call_sid, attempt, status, record.can_intervene)  # fmt: skip
    if claim(redis, call_sid, "reported"):
        try:
            on_finished(incident_id, record)
        except BaseException:
            release(redis, call_sid, "reported")
            raise
    return written
