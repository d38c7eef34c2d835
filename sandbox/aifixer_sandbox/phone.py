"""Twilio Voice stand-in: the Calls REST API and a simulated person who answers the phone.

When aifixer cannot fix a Deployment it phones the on-call engineer with the real
`twilio` client, reads the incident out with `<Say>` and asks for an acknowledgement
with `<Gather>`. That flow is only testable if something plays the call the way
Twilio does, so this module serves `/2010-04-01/Accounts/{AccountSid}/Calls...` and,
for every call created, runs it in a background coroutine:

* status callbacks in Twilio's order (initiated, ringing, answered, completed) with
  Twilio's parameters, only for the events asked for in `StatusCallbackEvent`;
* the TwiML fetched from `Url` (or taken from `Twiml`), with `<Say>`, `<Pause>`,
  `<Gather>`, `<Redirect>` and `<Hangup>` executed in order;
* every `<Say>` spoken by the real TTS engine `espeak-ng` into a WAV kept with the
  call, so a person can listen to what the on-call engineer would have heard;
* `<Gather>` answered as the scripted person does (`Phone.set_person`), posting
  `SpeechResult`/`Confidence` or `Digits` to the action URL;
* every webhook signed with `X-Twilio-Signature` exactly as Twilio signs it, so the
  product's `RequestValidator` check runs unchanged.

Durations (ringing, speech, gather timeouts) are simulated through the sandbox
`Clock`; timestamps are wall-clock UTC.

Pointing the real client here needs configuration only:

    client = twilio.rest.Client(account_sid, auth_token)
    client.api.base_url = "http://127.0.0.1:<port>"

`Domain.base_url` is what every Calls URL (and every `next_page_uri`) is joined to.
Twilio's Node.js library is pointed the same way (`client.api.baseUrl = ...`): it has
no option for another host; its `edge` and `region` options only splice an edge and a
region into the host name (`api.sydney.au1.twilio.com`).
`TWILIO_REGION`/`TWILIO_EDGE` must stay unset: both libraries rewrite the host name
when they are set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import shutil
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import yarl
from aiohttp import web
from multidict import MultiDictProxy

from aifixer_sandbox import faults
from aifixer_sandbox.clock import Clock

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
ESPEAK = "espeak-ng"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
CLIENT_IDENTITY = re.compile(r"^client:[A-Za-z0-9_.\-]+$")
CALL_SID_PATTERN = r"[^/.]+"

# Simulated seconds, chosen to look like a real call in the transcript.
QUEUE_SECONDS = 1.0  # API request accepted -> carrier starts dialing
PICKUP_SECONDS = 6.0  # about two rings before the person answers
BUSY_SECONDS = 2.0  # dialing -> busy signal
WORD_SECONDS = 0.4  # the person's speaking pace
END_OF_SPEECH_SECONDS = 1.0  # speechTimeout="auto" silence that ends an utterance
KEYPRESS_SECONDS = 0.5

CALL_EVENTS = ("initiated", "ringing", "answered", "completed")
CALL_SUBRESOURCES = (
    "events",
    "notifications",
    "payments",
    "recordings",
    "siprec",
    "streams",
    "transcriptions",
    "user_defined_message_subscriptions",
    "user_defined_messages",
)
TERMINAL_STATUSES = {"completed", "busy", "failed", "no-answer", "canceled"}
UNREACHABLE = ("no-answer", "busy", "failed")
APPLICATION_ERROR_SPEECH = "We are sorry, an application error has occurred. Goodbye."
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=15)  # Twilio gives up on a webhook after 15 s


# ---------------------------------------------------------------------------
# Errors in Twilio's REST shape


class TwilioError(Exception):
    """An API error rendered as Twilio renders it, so the client raises TwilioRestException."""

    def __init__(self, status: int, code: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def response(self) -> web.Response:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if self.status == 401 else None
        return web.json_response(body, status=self.status, headers=headers)


def not_found(path: str) -> TwilioError:
    return TwilioError(404, 20404, f"The requested resource {path} was not found")


# ---------------------------------------------------------------------------
# Signing and formatting


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """`X-Twilio-Signature`: base64(HMAC-SHA1(token, url + name1 + value1 + ...)), names sorted."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def rfc2822(dt: datetime | None) -> str | None:
    return format_datetime(dt.replace(microsecond=0)) if dt else None


def as_transcript(phrase: str) -> str:
    """Speech recognition output looks like 'Yes.': capitalised and punctuated."""
    text = phrase.strip()
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".?!" else text + "."


def is_webhook_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# ---------------------------------------------------------------------------
# The person at the other end


@dataclass(frozen=True)
class Answer:
    """What a person does when called.

    kind is "speech" (value = what they say), "dtmf" (value = keys pressed),
    "silence" (picks up, says nothing), or one of UNREACHABLE (the call never connects).
    """

    kind: str
    value: str = ""
    confidence: float = 0.0

    @classmethod
    def parse(cls, answer: str, confidence: float = 0.92) -> Answer:
        text = answer.strip()
        lowered = text.lower()
        if not text:
            raise ValueError("answer must not be empty; use 'silence' for no input")
        if lowered in UNREACHABLE or lowered == "silence":
            return cls(lowered)
        keys = re.fullmatch(r"press\s+([0-9*#]+)", lowered)
        if keys:
            return cls("dtmf", keys.group(1))
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be within 0..1, got {confidence!r}")
        return cls("speech", text, confidence)

    def describe(self) -> str:
        """The answer as it was scripted: "yes", "press 1", "silence", "busy"..."""
        return f"press {self.value}" if self.kind == "dtmf" else self.value or self.kind

    def seconds_to_give(self) -> float:
        """Simulated time the person takes to speak or type the answer."""
        if self.kind == "speech":
            return len(self.value.split()) * WORD_SECONDS + END_OF_SPEECH_SECONDS
        if self.kind == "dtmf":
            return len(self.value) * KEYPRESS_SECONDS
        return 0.0


NOBODY = Answer("no-answer")


# ---------------------------------------------------------------------------
# Call state


@dataclass
class Call:
    sid: str
    account_sid: str
    to: str
    from_: str
    url: str | None
    method: str
    twiml: str | None
    status_callback: str | None
    status_callback_method: str
    callback_events: frozenset[str]
    timeout: int
    date_created: datetime
    person: Answer
    status: str = "queued"
    date_updated: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    talk_seconds: float = 0.0
    hangup: str | None = None  # status requested through the API while the call runs
    events: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    spoken: int = 0  # Say verbs spoken so far; numbers the WAV files
    task: asyncio.Task | None = None

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    @property
    def duration(self) -> int | None:
        return math.ceil(self.talk_seconds) if self.status in TERMINAL_STATUSES else None

    def resource(self) -> dict[str, Any]:
        """The Call resource as the REST API returns it."""
        base = self.uri[: -len(".json")]
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated or self.date_created),
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": None,
            "status": self.status,
            "start_time": rfc2822(self.start_time),
            "end_time": rfc2822(self.end_time),
            "duration": None if self.duration is None else str(self.duration),
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": self.uri,
            "subresource_uris": {
                name: f"{base}/{''.join(part.capitalize() for part in name.split('_'))}.json"
                for name in CALL_SUBRESOURCES
            },
        }

    def record(self) -> dict[str, Any]:
        """The call as a person inspects it: outcome, timeline, Say audio, callbacks.

        `says` and `answer` summarise `events` for a one-line view: what was spoken,
        and what the person answered when a Gather asked (None if none asked).
        """
        asked = any(e["type"] == "gather" for e in self.events)
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "status": self.status,
            "duration": self.duration,
            "date_created": rfc2822(self.date_created),
            "start_time": rfc2822(self.start_time),
            "end_time": rfc2822(self.end_time),
            "person": {"kind": self.person.kind, "value": self.person.value},
            "says": [dict(e) for e in self.events if e["type"] == "say"],
            "answer": self.person.describe() if asked else None,
            "events": [dict(e) for e in self.events],
            "callbacks": [dict(c) for c in self.callbacks],
        }


# ---------------------------------------------------------------------------
# The phone network


class Phone:
    """Twilio's call engine for a set of accounts, plus the people it can ring."""

    def __init__(self, data_dir: Path, accounts: dict[str, str], clock: Clock) -> None:
        if shutil.which(ESPEAK) is None:
            raise RuntimeError(f"{ESPEAK} is required to speak <Say> (apt-get install {ESPEAK})")
        self.data_dir = Path(data_dir)
        self.accounts = dict(accounts)
        self.clock = clock
        self._people: dict[str, Answer] = {}
        self._calls: dict[str, Call] = {}
        self._session: aiohttp.ClientSession | None = None

    # -- scripting and inspection

    def set_person(self, number: str, answer: str, confidence: float = 0.92) -> None:
        """Script what the person at `number` does: see `Answer.parse`."""
        self._people[number] = Answer.parse(answer, confidence)

    def calls(self) -> list[dict[str, Any]]:
        """Every call placed, oldest first, with its transcript."""
        return [call.record() for call in self._calls.values()]

    async def finished(self, call_sid: str) -> dict[str, Any]:
        """Wait until the call has ended and its last callback was sent."""
        call = self._calls[call_sid]
        if call.task is not None:
            await asyncio.shield(call.task)
        return call.record()

    async def close(self) -> None:
        for call in self._calls.values():
            if call.task is not None and not call.task.done():
                call.task.cancel()
        await asyncio.gather(
            *(c.task for c in self._calls.values() if c.task), return_exceptions=True
        )
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the REST side

    def authenticate(self, request: web.Request, account_sid: str) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise TwilioError(401, 20003, "Authentication Error - No credentials provided")
        try:
            creds = aiohttp.BasicAuth.decode(header)
        except ValueError:
            creds = None
        token = self.accounts.get(creds.login) if creds else None
        if (
            token is None
            or not hmac.compare_digest(token.encode(), creds.password.encode())
            or creds.login != account_sid
        ):
            raise TwilioError(
                401, 20003, "Authenticate", "Your AccountSid or AuthToken was incorrect."
            )

    def place_call(self, account_sid: str, form: MultiDictProxy[str]) -> Call:
        to = _required(form, "To", 21201, "No 'To' number is specified")
        from_ = _required(form, "From", 21213, "No 'From' number is specified")
        if not (E164.match(to) or CLIENT_IDENTITY.match(to)):
            raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not (E164.match(from_) or CLIENT_IDENTITY.match(from_)):
            raise TwilioError(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        url, twiml = form.get("Url") or None, form.get("Twiml") or None
        if url and twiml:
            raise TwilioError(400, 21205, "Url and Twiml are mutually exclusive")
        if not url and not twiml:
            raise TwilioError(400, 21205, "Url parameter is required")
        if url and not is_webhook_url(url):
            raise TwilioError(400, 21205, f"Url is not a valid URL: {url}")
        status_callback = form.get("StatusCallback") or None
        if status_callback and not is_webhook_url(status_callback):
            raise TwilioError(400, 21609, f"StatusCallback is not a valid URL: {status_callback}")
        call = Call(
            sid="CA" + secrets.token_hex(16),
            account_sid=account_sid,
            to=to,
            from_=from_,
            url=url,
            method=_http_method(form, "Method"),
            twiml=twiml,
            status_callback=status_callback,
            status_callback_method=_http_method(form, "StatusCallbackMethod"),
            callback_events=_callback_events(form),
            timeout=_ring_timeout(form),
            date_created=self.clock.now(),
            person=self._people.get(to, NOBODY),
        )
        self._calls[call.sid] = call
        call.task = asyncio.get_running_loop().create_task(CallPlayer(self, call).run())
        return call

    def get_call(self, account_sid: str, call_sid: str, path: str) -> Call:
        call = self._calls.get(call_sid)
        if call is None or call.account_sid != account_sid:
            raise not_found(path)
        return call

    def list_calls(
        self, account_sid: str, to: str | None, from_: str | None, status: str | None
    ) -> list[Call]:
        """Matching calls, newest first as Twilio lists them."""
        return [
            call
            for call in reversed(self._calls.values())
            if call.account_sid == account_sid
            and (to is None or call.to == to)
            and (from_ is None or call.from_ == from_)
            and (status is None or call.status == status)
        ]

    def hang_up(self, call: Call, requested: str) -> None:
        """`Status=completed|canceled` on a live call; a no-op once the call has ended."""
        if requested not in ("completed", "canceled"):
            raise TwilioError(
                400, 20001, f"Status must be completed or canceled, got {requested!r}"
            )
        if call.status in TERMINAL_STATUSES or call.hangup:
            return
        if call.status == "in-progress":
            if requested == "canceled":
                return  # canceling only applies to calls not yet answered
            outcome = "completed"
        else:
            outcome = "canceled"
        call.hangup = outcome
        self.end(call, outcome)
        if call.task is not None:
            call.task.cancel()

    # -- shared by the call player

    def end(self, call: Call, status: str) -> None:
        call.status = status
        call.end_time = call.date_updated = self.clock.now()
        call.events.append({"type": "progress", "event": "completed", "status": status})

    def auth_token(self, call: Call) -> str:
        return self.accounts[call.account_sid]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=WEBHOOK_TIMEOUT)
        return self._session


def _required(form: MultiDictProxy[str], name: str, code: int, message: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise TwilioError(400, code, message)
    return value


def _http_method(form: MultiDictProxy[str], name: str) -> str:
    method = (form.get(name) or "POST").upper()
    if method not in ("GET", "POST"):
        raise TwilioError(400, 20001, f"{name} must be GET or POST, got {form[name]!r}")
    return method


def _callback_events(form: MultiDictProxy[str]) -> frozenset[str]:
    # The client repeats the key; some integrations send one space-separated value.
    events = {e for value in form.getall("StatusCallbackEvent", []) for e in value.split()}
    unknown = events - set(CALL_EVENTS)
    if unknown:
        raise TwilioError(400, 20001, f"Invalid StatusCallbackEvent: {', '.join(sorted(unknown))}")
    return frozenset(events or {"completed"})


def _ring_timeout(form: MultiDictProxy[str]) -> int:
    raw = form.get("Timeout") or "60"
    try:
        seconds = int(raw)
    except ValueError:
        raise TwilioError(400, 20001, f"Timeout must be an integer, got {raw!r}") from None
    return max(1, min(seconds, 600))


# ---------------------------------------------------------------------------
# Playing one call


class CallFailure(Exception):
    """The customer's application broke the call (Twilio's 11200/12100 class of errors)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Document:
    url: str | None  # None for inline Twiml: relative URLs cannot be resolved
    root: ET.Element


HANGUP = object()


class CallPlayer:
    """Plays one call from queued to its final status callback."""

    def __init__(self, phone: Phone, call: Call) -> None:
        self.phone = phone
        self.call = call
        self.clock = phone.clock
        self.sequence = 0

    async def run(self) -> None:
        try:
            outcome = await self._connect()
        except asyncio.CancelledError:
            if self.call.hangup is None:
                raise  # the sandbox is shutting down
            outcome = self.call.hangup
        except Exception as exc:  # a sandbox defect must not leave the call hanging
            log.exception("call %s broke", self.call.sid)
            self.call.events.append({"type": "sandbox-error", "message": str(exc)})
            outcome = "completed" if self.call.status == "in-progress" else "failed"
        if self.call.hangup is None:
            self.phone.end(self.call, outcome)
        await self._progress("completed", self.call.status)

    async def _connect(self) -> str:
        call, person = self.call, self.call.person
        await self.clock.sleep(QUEUE_SECONDS)
        call.start_time = call.date_updated = self.clock.now()
        await self._progress("initiated", "initiated")
        if person.kind == "failed":
            return "failed"
        if person.kind == "busy":
            await self.clock.sleep(BUSY_SECONDS)
            return "busy"
        self._set_status("ringing")
        await self._progress("ringing", "ringing")
        if person.kind == "no-answer" or PICKUP_SECONDS > call.timeout:
            await self.clock.sleep(call.timeout)
            return "no-answer"
        await self.clock.sleep(PICKUP_SECONDS)
        self._set_status("in-progress")
        await self._progress("answered", "in-progress")
        await self._converse()
        return "completed"

    def _set_status(self, status: str) -> None:
        self.call.status = status
        self.call.date_updated = self.clock.now()

    async def _spend(self, seconds: float) -> None:
        """Time passes on an answered call; it counts towards the call's duration."""
        await self.clock.sleep(seconds)
        self.call.talk_seconds += seconds

    # -- webhooks

    def _params(self, call_status: str) -> dict[str, str]:
        call = self.call
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": call_status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    async def _send(self, url: str, method: str, params: dict[str, str]) -> tuple[int, str]:
        """One signed webhook request; returns (HTTP status, body)."""
        if method == "GET":
            url = url + ("&" if urlsplit(url).query else "?") + urlencode(params)
            signature, data = sign(self.phone.auth_token(self.call), url, {}), None
        else:
            signature, data = sign(self.phone.auth_token(self.call), url, params), params
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
        # encoded=True: send the URL byte for byte as signed, without requoting.
        target = yarl.URL(url, encoded=True)
        async with self.phone.session().request(method, target, data=data, headers=headers) as resp:
            return resp.status, await resp.text()

    async def _progress(self, event: str, call_status: str) -> None:
        """Note a call progress event and post its status callback if it was asked for."""
        call = self.call
        if event != "completed":
            call.events.append({"type": "progress", "event": event, "status": call_status})
        if not call.status_callback or event not in call.callback_events:
            return
        params = self._params(call_status) | {
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(self.sequence),
            "Timestamp": rfc2822(self.clock.now()),
        }
        if event == "completed":
            params["CallDuration"] = str(call.duration or 0)
        self.sequence += 1
        entry: dict[str, Any] = {
            "event": event,
            "status": call_status,
            "url": call.status_callback,
            "http_status": None,  # stays None if the request fails or the call is hung up meanwhile
        }
        call.callbacks.append(entry)
        try:
            entry["http_status"], _ = await self._send(
                call.status_callback, call.status_callback_method, params
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            entry["error"] = str(exc) or type(exc).__name__

    async def _fetch(self, purpose: str, url: str, method: str, extra: dict[str, str]) -> Document:
        """Request TwiML from the customer's application and parse it."""
        if not is_webhook_url(url):
            raise CallFailure(11200, f"cannot request {url!r}: not an absolute http(s) URL")
        entry: dict[str, Any] = {
            "type": "request",
            "purpose": purpose,
            "url": url,
            "method": method,
            "params": dict(extra),
            "http_status": None,
        }
        self.call.events.append(entry)
        try:
            status, body = await self._send(url, method, self._params("in-progress") | extra)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CallFailure(
                11200, f"HTTP retrieval failure: {exc or type(exc).__name__}"
            ) from None
        entry["http_status"] = status
        if not 200 <= status < 300:
            raise CallFailure(11200, f"HTTP retrieval failure: {method} {url} returned {status}")
        return Document(url, parse_twiml(body))

    # -- TwiML

    async def _converse(self) -> None:
        try:
            if self.call.twiml is not None:
                doc: Document | None = Document(None, parse_twiml(self.call.twiml))
            else:
                doc = await self._fetch("twiml", self.call.url, self.call.method, {})
            while doc is not None:
                doc = await self._run_document(doc)
        except CallFailure as failure:
            self.call.events.append(
                {"type": "error", "code": failure.code, "message": str(failure)}
            )
            await self._say(APPLICATION_ERROR_SPEECH, "woman", "en-US")

    async def _run_document(self, doc: Document) -> Document | None:
        """Execute verbs in order; return the document that replaces this one, if any."""
        for verb in doc.root:
            outcome = await self._verb(doc, verb)
            if outcome is HANGUP:
                return None
            if isinstance(outcome, Document):
                return outcome
        return None  # no verbs left: Twilio hangs up

    async def _verb(self, doc: Document, verb: ET.Element) -> object:
        if verb.tag == "Say":
            await self._say_verb(verb)
        elif verb.tag == "Pause":
            length = _int_attr(verb, "length", 1)
            self.call.events.append({"type": "pause", "seconds": length})
            await self._spend(length)
        elif verb.tag == "Gather":
            return await self._gather(doc, verb)
        elif verb.tag == "Redirect":
            target = _resolve(doc, (verb.text or "").strip())
            self.call.events.append({"type": "redirect", "url": target})
            return await self._fetch("redirect", target, (verb.get("method") or "POST").upper(), {})
        elif verb.tag == "Hangup":
            self.call.events.append({"type": "hangup"})
            return HANGUP
        else:
            self.call.events.append({"type": "unsupported", "verb": verb.tag})
        return None

    async def _say_verb(self, verb: ET.Element) -> None:
        text = " ".join((verb.text or "").split())
        if not text:
            self.call.events.append(
                {"type": "warning", "code": 13520, "message": "Say: empty text"}
            )
            return
        loops = max(1, _int_attr(verb, "loop", 1))
        await self._say(text, verb.get("voice", "man"), verb.get("language", "en-US"), loops)

    async def _say(self, text: str, voice: str, language: str, loops: int = 1) -> None:
        self.call.spoken += 1
        wav = self.phone.data_dir / self.call.sid / f"{self.call.spoken:02d}.wav"
        seconds = await speak(text, language, voice, wav)
        self.call.events.append(
            {
                "type": "say",
                "text": text,
                "voice": voice,
                "language": language,
                "loop": loops,
                "wav": str(wav),
                "seconds": round(seconds, 3),
            }
        )
        await self._spend(seconds * loops)

    async def _gather(self, doc: Document, verb: ET.Element) -> Document | None:
        for child in verb:
            if child.tag in ("Say", "Pause"):
                await self._verb(doc, child)
            else:
                self.call.events.append({"type": "unsupported", "verb": f"Gather/{child.tag}"})
        heard = await self._listen(verb)
        action_on_empty = verb.get("actionOnEmptyResult", "false").lower() == "true"
        person = self.call.person
        self.call.events.append(
            {
                "type": "gather",
                "input": verb.get("input", "dtmf"),
                "answer": {"kind": person.kind, "value": person.value},
                "heard": dict(heard),
            }
        )
        if not heard and not action_on_empty:
            return None  # no input: fall through to the verb after <Gather>
        action = _resolve(doc, verb.get("action", doc.url or ""))
        return await self._fetch(
            "gather-action", action, (verb.get("method") or "POST").upper(), heard
        )

    async def _listen(self, verb: ET.Element) -> dict[str, str]:
        """The person's reply as Gather reports it; empty when nothing was captured."""
        inputs = set((verb.get("input") or "dtmf").split())
        timeout = _int_attr(verb, "timeout", 5)
        person = self.call.person
        if person.kind == "speech" and "speech" in inputs:
            await self._spend(person.seconds_to_give())
            return {
                "SpeechResult": as_transcript(person.value),
                "Confidence": str(person.confidence),
            }
        if person.kind == "dtmf" and "dtmf" in inputs:
            return {"Digits": await self._keys(verb, person.value, timeout)}
        await self._spend(timeout)
        return {}

    async def _keys(self, verb: ET.Element, pressed: str, timeout: int) -> str:
        """Digits as Gather collects them: up to numDigits, or until finishOnKey."""
        finish = verb.get("finishOnKey", "#")
        num_digits = _int_attr(verb, "numDigits", 0)
        digits = pressed.split(finish, 1)[0] if finish else pressed
        ended = (finish and finish in pressed) or (num_digits and len(digits) >= num_digits)
        digits = digits[:num_digits] if num_digits else digits
        await self._spend(KEYPRESS_SECONDS * len(digits))
        if not ended:
            await self._spend(timeout)  # Gather waits for more keys before submitting
        return digits


def parse_twiml(text: str) -> ET.Element:
    try:
        # The TwiML comes from the application under test on loopback; expat caps entity expansion.
        root = ET.fromstring(text.strip())  # noqa: S314
    except ET.ParseError as exc:
        raise CallFailure(12100, f"Document parse failure: {exc}") from None
    if root.tag != "Response":
        raise CallFailure(
            12100, f"Document parse failure: root element is <{root.tag}>, not <Response>"
        )
    return root


def _int_attr(verb: ET.Element, name: str, default: int) -> int:
    raw = verb.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise CallFailure(12200, f"<{verb.tag}> {name}={raw!r} is not an integer") from None


def _resolve(doc: Document, target: str) -> str:
    if doc.url is None and not is_webhook_url(target):
        raise CallFailure(11200, f"relative URL {target!r} in inline Twiml cannot be resolved")
    return urljoin(doc.url or "", target)


# ---------------------------------------------------------------------------
# Speech synthesis


# Amazon Polly voices Twilio offers for the call's languages that are women's voices.
POLLY_FEMALE = frozenset(
    f"polly.{name}" for name in ("joanna", "salli", "kendra", "kimberly", "ivy", "lea", "celine")
)


async def speak(text: str, language: str, voice: str, wav: Path) -> float:
    """Speak `text` into `wav` with espeak-ng; return the audio length in seconds."""
    wav.parent.mkdir(parents=True, exist_ok=True)
    # espeak-ng resolves "fr-fr" or "en-us" itself and falls back to the bare language.
    female = voice.lower() in ("woman", "alice") or voice.lower() in POLLY_FEMALE
    espeak_voice = language.lower() + ("+f3" if female else "")
    proc = await asyncio.create_subprocess_exec(
        ESPEAK,
        "-v",
        espeak_voice,
        "-w",
        str(wav),
        "--stdin",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await proc.communicate(text.encode())
    except asyncio.CancelledError:
        proc.kill()  # the call was hung up mid-sentence
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"{ESPEAK} failed ({proc.returncode}): {stderr.decode(errors='replace').strip()}"
        )
    with wave.open(str(wav), "rb") as audio:
        return audio.getnframes() / audio.getframerate()


# ---------------------------------------------------------------------------
# HTTP application

PHONE = web.AppKey("phone", Phone)
ACCOUNT = f"/{API_VERSION}/Accounts/{{account_sid}}"


@web.middleware
async def twilio_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TwilioError as error:
        return error.response()
    except web.HTTPNotFound:
        if request.path.startswith(f"/{API_VERSION}/"):
            return not_found(request.path).response()
        raise
    except web.HTTPMethodNotAllowed:
        if request.path.startswith(f"/{API_VERSION}/"):
            return TwilioError(405, 20004, "Method not allowed").response()
        raise


def _authorized_account(request: web.Request) -> str:
    account_sid = request.match_info["account_sid"]
    request.app[PHONE].authenticate(request, account_sid)
    return account_sid


async def create_call(request: web.Request) -> web.Response:
    account_sid = _authorized_account(request)
    call = request.app[PHONE].place_call(account_sid, await request.post())
    return web.json_response(call.resource(), status=201)


async def fetch_call(request: web.Request) -> web.Response:
    account_sid = _authorized_account(request)
    call = request.app[PHONE].get_call(account_sid, request.match_info["call_sid"], request.path)
    return web.json_response(call.resource())


async def update_call(request: web.Request) -> web.Response:
    account_sid = _authorized_account(request)
    phone = request.app[PHONE]
    call = phone.get_call(account_sid, request.match_info["call_sid"], request.path)
    form = await request.post()
    if "Url" in form or "Twiml" in form:
        raise TwilioError(
            400, 20001, "Redirecting a live call (Url/Twiml) is not supported by the sandbox"
        )
    if "Status" in form:
        phone.hang_up(call, form["Status"])
    return web.json_response(call.resource())


async def list_calls(request: web.Request) -> web.Response:
    account_sid = _authorized_account(request)
    query = request.query
    try:
        page = max(0, int(query.get("Page", "0")))
        page_size = max(1, min(1000, int(query.get("PageSize", "50"))))
    except ValueError:
        raise TwilioError(400, 20001, "Page and PageSize must be integers") from None
    filters = {name: query[name] for name in ("To", "From", "Status") if query.get(name)}
    calls = request.app[PHONE].list_calls(
        account_sid, filters.get("To"), filters.get("From"), filters.get("Status")
    )
    start = page * page_size
    chunk = calls[start : start + page_size]

    def page_uri(number: int) -> str:
        params = filters | {"PageSize": page_size, "Page": number}
        return f"{request.path}?{urlencode(params)}"

    return web.json_response(
        {
            "calls": [call.resource() for call in chunk],
            "start": start,
            "end": start + max(len(chunk) - 1, 0),
            "page": page,
            "page_size": page_size,
            "uri": page_uri(page),
            "first_page_uri": page_uri(0),
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "next_page_uri": page_uri(page + 1) if start + page_size < len(calls) else None,
        }
    )


async def sandbox_calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[PHONE].calls())


async def sandbox_audio(request: web.Request) -> web.StreamResponse:
    phone = request.app[PHONE]
    path = phone.data_dir / request.match_info["call_sid"] / f"{request.match_info['name']}.wav"
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


def _fault_error(request: web.Request, fault: faults.Fault) -> web.Response:
    """An injected status fault as Twilio's JSON error (see `faults`)."""
    status = fault.status or 500
    return TwilioError(status, 20000 + status, fault.phrase()).response()


def make_app(phone: Phone) -> web.Application:
    app = web.Application(middlewares=[twilio_errors])
    faults.install(app, "twilio", _fault_error)
    app[PHONE] = phone
    call_path = f"{ACCOUNT}/Calls/{{call_sid:{CALL_SID_PATTERN}}}.json"
    app.router.add_post(f"{ACCOUNT}/Calls.json", create_call)
    app.router.add_get(f"{ACCOUNT}/Calls.json", list_calls)
    app.router.add_get(call_path, fetch_call)
    app.router.add_post(call_path, update_call)
    app.router.add_get("/sandbox/calls", sandbox_calls)
    app.router.add_get("/sandbox/calls/{call_sid:CA[0-9a-f]{32}}/{name:[0-9]+}.wav", sandbox_audio)

    async def close(_: web.Application) -> None:
        await phone.close()

    app.on_cleanup.append(close)
    return app
