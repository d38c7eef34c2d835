"""A whole on-call phone call: the product's Phone adapter, the Twilio stand-in, `aifixer web`.

The real `twilio` client places the call against the sandbox phone; the stand-in
speaks the `<Say>` verbs with espeak-ng, plays the scripted person and posts the
Gather result and the status callbacks, signed, to `aifixer web` on loopback; the web
app validates them, stores the answer in a real Redis and writes the call file.
"""

from __future__ import annotations

import queue
import secrets
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests
from pydantic import SecretStr
from twilio.base.exceptions import TwilioRestException

from aifixer import web
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.phone import DEFAULT_QUESTION, QUESTIONS, THANKS, Phone, rest_error
from aifixer.callfile import CallContext, CallFile, store_call_context
from aifixer.models import CallRecord
from aifixer.settings import Settings
from aifixer_sandbox.serve import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SPEED = 100  # simulated seconds per wall second: a call takes well under a second
CALL_WAIT = 30  # wall seconds
NUMBER = "+33612345678"
SPEECH = "Deployment checkout in namespace shop is crash looping. The automatic fix did not work."


@dataclass
class Rig:
    world: object
    settings: Settings
    phone: Phone
    redis: redis.Redis
    finished: queue.Queue = field(default_factory=queue.Queue)

    def set_person(self, number: str, answer: str) -> None:
        async def script() -> None:
            self.world.phone.set_person(number, answer)

        self.world.call(script)

    def call(self, answer: str, number: str = NUMBER, attempt: int = 1) -> tuple[CallRecord, dict]:
        """Call a person who answers `answer`, as the pipeline does; (call file line, transcript)."""
        self.set_person(number, answer)
        fingerprint = secrets.token_hex(8)
        context = CallContext(
            incident_id=fingerprint, fingerprint=fingerprint, attempt=attempt, number=number, speech=SPEECH,
            time=datetime.now(UTC),
        )  # fmt: skip
        store_call_context(self.redis, context)  # before dialling: callbacks may come at once
        sid = self.phone.place_call(number, SPEECH, incident_id=fingerprint, attempt=attempt)
        store_call_context(self.redis, context.model_copy(update={"call_sid": sid}))
        transcript = self.world.call(self.world.phone.finished, sid, timeout=CALL_WAIT)
        reported_fp, record = self.finished.get(timeout=CALL_WAIT)
        assert reported_fp == fingerprint and record.call_sid == sid
        return record, transcript

    @property
    def lines(self) -> list[CallRecord]:
        return CallFile(self.settings.call_file).read()


@pytest.fixture
def rig(make_world, redis_url: str, tmp_path: Path) -> Iterator[Rig]:
    world = make_world(None, speed=SPEED, load=False)
    ep = world.endpoints
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        twilio_account_sid=ep.twilio_account_sid,
        twilio_auth_token=SecretStr(ep.twilio_auth_token),
        twilio_from_number=ep.twilio_from,
        twilio_api_base_url=ep.twilio_base,
        call_file=tmp_path / "calls.jsonl",
        gather_timeout_s=5,
        ring_timeout_s=20,
    )
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    rig = Rig(world, settings, Phone(settings), client)
    app = web.make_app(
        settings, client, lambda fp, rec: rig.finished.put((fp, rec)), print, on_levels=print
    )
    url, stop = serve_in_thread(app, "web")
    settings.public_base_url = url  # the phone's callback URLs are built per call
    yield rig
    stop()
    client.close()


def says(transcript: dict) -> list[str]:
    return [say["text"] for say in transcript["says"]]


def test_yes_person_can_intervene(rig: Rig) -> None:
    record, transcript = rig.call("yes")
    [line] = rig.lines
    assert line == record
    assert (line.number, line.speech, line.can_intervene, line.status) == (
        NUMBER, SPEECH, True, "completed",
    )  # fmt: skip
    assert line.answer_text == "Yes." and line.attempt == 1
    assert abs((datetime.now(UTC) - line.time).total_seconds()) < CALL_WAIT
    assert transcript["status"] == "completed" and transcript["answer"] == "yes"
    assert says(transcript) == [SPEECH, DEFAULT_QUESTION, "Thank you, noted: you can intervene."]
    gather = next(e for e in transcript["events"] if e["type"] == "request")
    assert gather["purpose"] == "gather-action" and gather["http_status"] == 200
    callbacks = transcript["callbacks"]
    assert [c["event"] for c in callbacks] == ["initiated", "ringing", "answered", "completed"]
    assert all(c["http_status"] == 204 for c in callbacks)  # every signature validated


@pytest.mark.parametrize(("answer", "can_intervene"), [("oui", True), ("Non, désolé", False)])
def test_a_french_call_speaks_asks_and_thanks_in_french(rig: Rig, answer, can_intervene) -> None:
    rig.settings.call_language = "fr"
    record, transcript = rig.call(answer)
    assert record.can_intervene is can_intervene
    assert says(transcript) == [SPEECH, QUESTIONS["fr"], THANKS[("fr", can_intervene)]]
    assert {(s["language"], s["voice"]) for s in transcript["says"]} == {("fr-FR", "Polly.Lea")}


def test_twilio_lists_and_reports_the_calls_placed(rig: Rig) -> None:
    """What a resumed dial and the escalation watchdog ask Twilio, through its client."""
    since = datetime.now(UTC)
    record, _ = rig.call("no")
    assert rig.phone.calls_since(NUMBER, since) == [record.call_sid]
    assert rig.phone.calls_since("+33699999999", since) == []
    assert rig.phone.call_status(record.call_sid) == "completed"
    with pytest.raises(PermanentError):
        rig.phone.call_status("CA" + "0" * 32)


def test_speech_reaches_the_phone_and_is_spoken(rig: Rig) -> None:
    _, transcript = rig.call("yes")
    calls = requests.get(rig.settings.twilio_api_base_url + "/sandbox/calls", timeout=10).json()
    [seen] = [c for c in calls if c["sid"] == transcript["sid"]]
    first = seen["says"][0]
    assert first["text"] == SPEECH and first["language"] == "en-US"
    with wave.open(first["wav"], "rb") as audio:
        assert audio.getnframes() / audio.getframerate() > 1.0  # a sentence, not a click
    wav_url = f"{rig.settings.twilio_api_base_url}/sandbox/calls/{seen['sid']}/01.wav"
    resp = requests.get(wav_url, timeout=10)
    assert resp.status_code == 200 and resp.content[:4] == b"RIFF"


@pytest.mark.parametrize(
    ("answer", "can_intervene", "status", "answer_text"),
    [
        ("no", False, "completed", "No."),
        ("Non, désolé", False, "completed", "Non, désolé."),
        ("oui", True, "completed", "Oui."),
        ("press 1", True, "completed", "1"),
        ("press 2", False, "completed", "2"),
        ("silence", False, "completed", None),
        ("no-answer", False, "no-answer", None),
        ("busy", False, "busy", None),
        ("failed", False, "failed", None),
    ],
)
def test_answers_reach_the_call_file(rig: Rig, answer, can_intervene, status, answer_text) -> None:
    record, transcript = rig.call(answer)
    [line] = rig.lines
    assert line == record
    assert (line.can_intervene, line.status, line.answer_text) == (
        can_intervene,
        status,
        answer_text,
    )
    assert line.speech == SPEECH and line.number == NUMBER
    assert transcript["status"] == status
    if status == "completed" and not can_intervene:
        assert says(transcript)[-1] == "Thank you. We will call the next person."


def test_next_number_gets_its_own_line(rig: Rig) -> None:
    """The pipeline calls the next person on a no; each call is one line."""
    first, _ = rig.call("no", number="+33611111111", attempt=1)
    second, _ = rig.call("yes", number="+33622222222", attempt=2)
    assert [(c.number, c.attempt, c.can_intervene) for c in rig.lines] == [
        ("+33611111111", 1, False), ("+33622222222", 2, True),
    ]  # fmt: skip
    assert first.call_sid != second.call_sid


def test_region_and_edge_from_the_environment_are_ignored(rig: Rig, monkeypatch) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    record, _ = rig.call("yes")
    assert record.can_intervene is True


def test_not_e164_is_permanent_without_dialling(rig: Rig) -> None:
    with pytest.raises(PermanentError, match="E.164"):
        rig.phone.place_call("06 12 34 56 78", SPEECH, incident_id="fp", attempt=1)
    calls = requests.get(rig.settings.twilio_api_base_url + "/sandbox/calls", timeout=10).json()
    assert calls == []


def test_wrong_credentials_are_permanent(rig: Rig) -> None:
    settings = rig.settings.model_copy(update={"twilio_auth_token": SecretStr("0" * 32)})
    with pytest.raises(PermanentError) as caught:
        Phone(settings).place_call(NUMBER, SPEECH, incident_id="fp", attempt=1)
    assert caught.value.status == 401
    assert "0" * 32 not in str(caught.value)


def test_unreachable_api_is_transient(rig: Rig) -> None:
    settings = rig.settings.model_copy(
        update={"twilio_api_base_url": "http://127.0.0.1:1", "request_timeout_s": 2.0}
    )
    with pytest.raises(TransientError, match="cannot reach"):
        Phone(settings).place_call(NUMBER, SPEECH, incident_id="fp", attempt=1)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(400, 21211, PermanentError), (404, 20404, PermanentError), (429, 20429, TransientError),
     (503, None, TransientError)],
)  # fmt: skip
def test_rest_errors_are_decided_once(status, code, error) -> None:
    exc = TwilioRestException(status, "/2010-04-01/Accounts/AC1/Calls.json", "nope", code, "POST")
    translated = rest_error(exc)
    assert type(translated) is error and translated.status == status
