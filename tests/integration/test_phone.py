"""The Twilio Voice stand-in, driven by the real `twilio` client over loopback.

A small aiohttp app plays the customer's webhook: it serves TwiML (Say + Gather),
records every request Twilio makes and checks each one with the client library's
own `RequestValidator`, so signing is checked against the reference implementation
rather than against the stand-in's idea of it.
"""

from __future__ import annotations

import json
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from aifixer_sandbox.clock import Clock
from aifixer_sandbox.phone import Phone, make_app, sign
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCOUNT = "AC" + "1" * 32
TOKEN = "f" * 32
OTHER_TOKEN = "0" * 32
CALLER = "+15005550006"
ON_CALL = "+33612345678"
CALL_WAIT = 20  # wall seconds; calls take well under a second at this clock speed

PROMPT = "Deployment checkout is failing in namespace shop. The automatic fix did not work."
ASK = "Say yes or press 1 to acknowledge."
NOBODY_HEARD = "We did not hear from you. Goodbye."
THANKS = "Thank you, the incident is acknowledged."


@dataclass
class Received:
    path: str
    method: str
    url: str
    params: dict[str, str]  # the POST body; GET parameters stay in the URL
    signature: str


@dataclass
class Webhook:
    """The customer's application: serves TwiML and records what Twilio sends."""

    gather_input: str = "speech dtmf"
    requests: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/voice", self.voice)
        app.router.add_get("/voice", self.voice)
        app.router.add_post("/broken", self.broken)
        app.router.add_post("/answer", self.answer)
        app.router.add_post("/status", self.status)
        return app

    async def _record(self, request: web.Request) -> None:
        form = await request.post()
        self.requests.append(
            Received(
                request.path,
                request.method,
                str(request.url),
                {k: str(v) for k, v in form.items()},
                request.headers.get("X-Twilio-Signature", ""),
            )
        )

    async def voice(self, request: web.Request) -> web.Response:
        await self._record(request)
        return twiml(
            f"<Say>{escape(PROMPT)}</Say>"
            f'<Gather input="{self.gather_input}" action="/answer" method="POST" timeout="3"'
            f' numDigits="1" language="fr-FR"><Say>{ASK}</Say></Gather>'
            f"<Say>{NOBODY_HEARD}</Say>"
        )

    async def answer(self, request: web.Request) -> web.Response:
        await self._record(request)
        return twiml(f"<Say>{THANKS}</Say><Hangup/><Say>never spoken</Say>")

    async def broken(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=500, text="Internal Server Error")

    async def status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="")

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


def twiml(body: str) -> web.Response:
    return web.Response(
        text=f"<?xml version='1.0'?><Response>{body}</Response>", content_type="text/xml"
    )


@dataclass
class Rig:
    loop: LoopThread
    phone: Phone
    api_url: str
    webhook: Webhook
    hook_url: str

    def client(self, token: str = TOKEN) -> Client:
        client = Client(ACCOUNT, token, environment={})
        client.api.base_url = self.api_url
        return client

    def dial(
        self, to: str = ON_CALL, events=("initiated", "ringing", "answered", "completed"), **kw
    ):
        return self.client().calls.create(
            to=to,
            from_=CALLER,
            url=f"{self.hook_url}/voice",
            status_callback=f"{self.hook_url}/status",
            status_callback_event=list(events),
            **kw,
        )

    def finished(self, sid: str) -> dict:
        return self.loop.call(self.phone.finished, sid, timeout=CALL_WAIT)

    def set_person(self, number: str, answer: str) -> None:
        self.loop.call_soon(self.phone.set_person, number, answer)


@pytest.fixture
def rig(tmp_path):
    loop = LoopThread().start()
    phone = Phone(tmp_path / "calls", {ACCOUNT: TOKEN}, Clock(speed=200))
    webhook = Webhook()
    api = loop.call(start_site, Site("phone", make_app(phone)))
    hook = loop.call(start_site, Site("webhook", webhook.app()))
    try:
        yield Rig(loop, phone, api.url, webhook, hook.url)
    finally:
        loop.call(stop_site, api)
        loop.call(stop_site, hook)
        loop.stop()


def says(record: dict) -> list[dict]:
    return [e for e in record["events"] if e["type"] == "say"]


def wav_seconds(path: str) -> float:
    with wave.open(path, "rb") as audio:
        return audio.getnframes() / audio.getframerate()


def test_answered_call_speaks_gathers_and_reports_progress(rig):
    rig.set_person(ON_CALL, "yes")
    call = rig.dial()
    assert call.status == "queued"
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert call.direction == "outbound-api" and call.to == ON_CALL and call._from == CALLER

    record = rig.finished(call.sid)

    # Status callbacks in Twilio's order, numbered, duration on the last one.
    statuses = [r.params["CallStatus"] for r in rig.webhook.at("/status")]
    assert statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert [r.params["SequenceNumber"] for r in rig.webhook.at("/status")] == ["0", "1", "2", "3"]
    assert [c["http_status"] for c in record["callbacks"]] == [200, 200, 200, 200]
    completed = rig.webhook.at("/status")[-1].params
    assert int(completed["CallDuration"]) > 0

    # The TwiML request, then the Gather action with what the person said.
    (voice,) = rig.webhook.at("/voice")
    assert voice.params["CallStatus"] == "in-progress"
    assert voice.params["Direction"] == "outbound-api"
    assert voice.params["CallSid"] == call.sid and voice.params["AccountSid"] == ACCOUNT
    (answer,) = rig.webhook.at("/answer")
    assert answer.params["SpeechResult"] == "Yes."
    assert 0 < float(answer.params["Confidence"]) <= 1
    assert "Digits" not in answer.params

    # What was spoken: the action's TwiML replaced the document and Hangup ended it.
    assert [s["text"] for s in says(record)] == [PROMPT, ASK, THANKS]
    assert says(record)[1]["language"] == "en-US"  # a nested Say does not inherit Gather's
    for say in says(record):
        assert wav_seconds(say["wav"]) == pytest.approx(say["seconds"], abs=0.01)
        assert say["seconds"] > 0.3

    fetched = rig.client().calls(call.sid).fetch()
    assert fetched.status == "completed"
    assert int(fetched.duration) == int(completed["CallDuration"])
    assert fetched.start_time is not None and fetched.end_time >= fetched.start_time


def test_every_webhook_is_signed_with_the_account_token(rig):
    rig.set_person(ON_CALL, "press 1")
    rig.finished(rig.dial().sid)
    assert len(rig.webhook.requests) == 6  # voice, answer, four status callbacks
    right, wrong = RequestValidator(TOKEN), RequestValidator(OTHER_TOKEN)
    for received in rig.webhook.requests:
        assert received.signature
        assert right.validate(received.url, received.params, received.signature), received.path
        assert not wrong.validate(received.url, received.params, received.signature)


def test_signature_matches_the_client_library_algorithm():
    params = {"To": "+1555", "CallSid": "CA1", "Confidence": "0.9", "SpeechResult": "Non, désolé."}
    url = "https://example.com/voice?x=1"
    assert sign(TOKEN, url, params) == RequestValidator(TOKEN).compute_signature(url, params)
    assert sign(TOKEN, url, params) != sign(OTHER_TOKEN, url, params)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("press 1", {"Digits": "1"}),
        ("non, désolé", {"SpeechResult": "Non, désolé."}),
        ("press 42#", {"Digits": "4"}),  # numDigits="1" stops after the first key
    ],
)
def test_gather_posts_the_persons_answer(rig, answer, expected):
    rig.set_person(ON_CALL, answer)
    record = rig.finished(rig.dial().sid)
    (posted,) = rig.webhook.at("/answer")
    assert expected.items() <= posted.params.items()
    assert ("SpeechResult" in posted.params) == ("SpeechResult" in expected)
    assert record["status"] == "completed"


def test_silence_falls_through_to_the_verb_after_gather(rig):
    rig.set_person(ON_CALL, "silence")
    record = rig.finished(rig.dial().sid)
    assert rig.webhook.at("/answer") == []
    assert [s["text"] for s in says(record)] == [PROMPT, ASK, NOBODY_HEARD]
    (gather,) = [e for e in record["events"] if e["type"] == "gather"]
    assert gather["heard"] == {}
    assert record["status"] == "completed"


def test_speech_is_not_heard_by_a_dtmf_only_gather(rig):
    rig.webhook.gather_input = "dtmf"
    rig.set_person(ON_CALL, "yes")
    record = rig.finished(rig.dial().sid)
    assert rig.webhook.at("/answer") == []
    assert says(record)[-1]["text"] == NOBODY_HEARD


def test_wav_duration_grows_with_the_text(rig):
    short, long = "Hello.", " ".join([PROMPT] * 3)
    durations = []
    for text in (short, long):
        rig.set_person(ON_CALL, "silence")
        call = rig.client().calls.create(
            to=ON_CALL,
            from_=CALLER,
            twiml=f'<Response><Say language="fr-FR">{text}</Say></Response>',
        )
        (say,) = says(rig.finished(call.sid))
        assert say["text"] == text and say["language"] == "fr-FR"
        durations.append(wav_seconds(say["wav"]))
    assert durations[1] > 3 * durations[0]


@pytest.mark.parametrize(
    ("behaviour", "progress"),
    [
        ("no-answer", ["initiated", "ringing", "no-answer"]),
        ("busy", ["initiated", "busy"]),
        ("failed", ["initiated", "failed"]),
    ],
)
def test_unreached_person(rig, behaviour, progress):
    rig.set_person(ON_CALL, behaviour)
    call = rig.dial()
    record = rig.finished(call.sid)
    assert [r.params["CallStatus"] for r in rig.webhook.at("/status")] == progress
    assert rig.webhook.at("/voice") == [] and says(record) == []
    fetched = rig.client().calls(call.sid).fetch()
    assert fetched.status == behaviour and fetched.duration == "0"
    assert record["answer"] is None


def test_default_callback_is_completed_only_and_unknown_numbers_ring_out(rig):
    call = rig.dial(to="+14155550100", events=(), timeout=15)
    rig.finished(call.sid)
    assert [r.params["CallStatus"] for r in rig.webhook.at("/status")] == ["no-answer"]


def test_hanging_up_a_ringing_call_cancels_it(rig):
    rig.set_person(ON_CALL, "no-answer")
    call = rig.dial(timeout=600)
    updated = rig.client().calls(call.sid).update(status="completed")
    assert updated.status == "canceled"
    rig.finished(call.sid)
    assert rig.webhook.at("/status")[-1].params["CallStatus"] == "canceled"


def test_list_filters_and_pages(rig):
    other = "+14155550199"
    for number in (ON_CALL, other, ON_CALL, ON_CALL):
        rig.set_person(number, "failed")
        rig.finished(rig.dial(to=number).sid)
    calls = rig.client().calls.list(to=ON_CALL, page_size=2)
    assert len(calls) == 3 and {c.to for c in calls} == {ON_CALL}
    assert len(rig.client().calls.list(status="failed", to=other)) == 1
    assert rig.client().calls.list(status="completed") == []


@pytest.mark.parametrize(
    ("kwargs", "code", "status"),
    [
        ({"to": "12345"}, 21211, 400),
        ({"from_": "not-a-number"}, 21212, 400),
        ({"url": "/relative"}, 21205, 400),
    ],
)
def test_invalid_create_parameters(rig, kwargs, code, status):
    params = {"to": ON_CALL, "from_": CALLER, "url": f"{rig.hook_url}/voice"} | kwargs
    with pytest.raises(TwilioRestException) as raised:
        rig.client().calls.create(**params)
    assert raised.value.code == code and raised.value.status == status
    assert rig.loop.call_soon(rig.phone.calls) == []


def test_unknown_call_is_20404(rig):
    with pytest.raises(TwilioRestException) as raised:
        rig.client().calls("CA" + "0" * 32).fetch()
    assert raised.value.code == 20404 and raised.value.status == 404


def test_bad_credentials_are_20003(rig):
    with pytest.raises(TwilioRestException) as raised:
        rig.client(OTHER_TOKEN).calls.create(to=ON_CALL, from_=CALLER, twiml="<Response/>")
    assert raised.value.code == 20003 and raised.value.status == 401
    assert rig.loop.call_soon(rig.phone.calls) == []


def test_inspection_view_serves_the_transcript(rig):
    rig.set_person(ON_CALL, "oui")
    sid = rig.dial().sid
    rig.finished(sid)
    with urllib.request.urlopen(f"{rig.api_url}/sandbox/calls", timeout=5) as resp:
        (served,) = json.load(resp)
    assert served["sid"] == sid and served["status"] == "completed"
    assert served["answer"] == "oui" and served["says"] == says(served)
    gather = next(e for e in served["events"] if e["type"] == "gather")
    assert gather["answer"] == {"kind": "speech", "value": "oui"}
    assert gather["heard"]["SpeechResult"] == "Oui."
    first_wav = says(served)[0]["wav"].rsplit("/", 1)[-1]
    with urllib.request.urlopen(
        f"{rig.api_url}/sandbox/calls/{sid}/{first_wav}", timeout=5
    ) as resp:
        assert resp.read(4) == b"RIFF"


def test_get_webhooks_are_signed_over_the_query_string(rig):
    rig.set_person(ON_CALL, "silence")
    rig.finished(rig.dial(method="GET").sid)
    (voice,) = rig.webhook.at("/voice")
    assert voice.method == "GET" and voice.params == {}
    query = parse_qs(urlsplit(voice.url).query)
    assert query["CallStatus"] == ["in-progress"] and query["CallSid"][0].startswith("CA")
    assert RequestValidator(TOKEN).validate(voice.url, {}, voice.signature)
    assert not RequestValidator(OTHER_TOKEN).validate(voice.url, {}, voice.signature)


def test_a_failing_webhook_ends_the_call_with_an_application_error(rig):
    rig.set_person(ON_CALL, "yes")
    call = rig.client().calls.create(to=ON_CALL, from_=CALLER, url=f"{rig.hook_url}/broken")
    record = rig.finished(call.sid)
    (error,) = [e for e in record["events"] if e["type"] == "error"]
    assert error["code"] == 11200
    assert [s["text"] for s in says(record)] == [
        "We are sorry, an application error has occurred. Goodbye."
    ]
    assert record["status"] == "completed"


def test_hanging_up_an_answered_call_completes_it(rig):
    rig.set_person(ON_CALL, "silence")
    call = rig.client().calls.create(
        to=ON_CALL,
        from_=CALLER,
        twiml='<Response><Pause length="600"/></Response>',
        status_callback=f"{rig.hook_url}/status",
    )
    deadline = time.monotonic() + CALL_WAIT
    while rig.client().calls(call.sid).fetch().status != "in-progress":
        assert time.monotonic() < deadline, "the call was never answered"
        time.sleep(0.01)
    assert rig.client().calls(call.sid).update(status="completed").status == "completed"
    rig.finished(call.sid)
    (completed,) = rig.webhook.at("/status")
    assert completed.params["CallStatus"] == "completed"
    assert int(completed.params["CallDuration"]) < 600
