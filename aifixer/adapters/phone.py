"""Phone calls through Twilio: the only module that imports `twilio`.

A call says what broke (`<Say>`), asks whether the person can intervene (`<Gather>`
for speech or a key), and tells Twilio where to report: the Gather result to
`{public_base_url}/twilio/gather` and the call's progress to `/twilio/status`, both
carrying the incident id and the attempt number in the query string. Twilio
signs the whole URL, so those two values come back authenticated; `aifixer web`
checks the signature with `validator()`.

The TwiML is sent inline (`Twiml=`), not fetched from a URL: the call does not depend
on `aifixer web` being reachable when the callee picks up, only when they answer.

`twilio_api_base_url` points the client at a Twilio-compatible endpoint instead of
api.twilio.com. The client also reads TWILIO_REGION/TWILIO_EDGE from the process
environment and rewrites the API host from them; aifixer is configured through
AIFIXER_* only, so those are cleared (set `twilio_api_base_url` to a regional host,
e.g. https://api.dublin.ie1.twilio.com, instead).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlencode

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import Gather, VoiceResponse

from aifixer.settings import Settings

from .errors import PermanentError, TransientError, bounded, is_transient_status

log = logging.getLogger(__name__)

SYSTEM = "twilio"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
INVALID_TO_NUMBER = 21211  # Twilio's "Invalid 'To' Phone Number"

GATHER_PATH = "/twilio/gather"
STATUS_PATH = "/twilio/status"
INCIDENT_PARAM = "incident"
ATTEMPT_PARAM = "attempt"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]

# The call speaks the configured language (`settings.call_language`): Twilio's locale
# for <Say> and for the speech recognition of the answer, a voice that speaks it, and
# the question, hints and replies in it.
LOCALES = {"en": "en-US", "fr": "fr-FR"}
VOICES = {"en": "Polly.Joanna", "fr": "Polly.Lea"}
QUESTIONS = {
    "en": "Can you intervene? Say yes or no, or press 1 for yes, 2 for no.",
    "fr": "Pouvez-vous intervenir ? Répondez oui ou non, ou tapez 1 pour oui, 2 pour non.",
}
SPEECH_HINTS = {"en": "yes, no", "fr": "oui, non"}
NO_ANSWER = {
    "en": "We did not get your answer. We will call the next person. Goodbye.",
    "fr": "Nous n'avons pas eu votre réponse. Nous appelons la personne suivante. Au revoir.",
}
THANKS = {
    ("en", True): "Thank you, noted: you can intervene.",
    ("en", False): "Thank you. We will call the next person.",
    ("fr", True): "Merci, c'est noté : vous pouvez intervenir.",
    ("fr", False): "Merci. Nous appelons la personne suivante.",
}
DEFAULT_QUESTION = QUESTIONS["en"]
NO_ANSWER_SPEECH = NO_ANSWER["en"]


class Phone:
    """Places calls to the on-call engineers.

    Args:
        settings: Twilio account, from number, public base URL of `aifixer web`,
            call language, ring and gather timeouts, request timeout.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=TwilioHttpClient(timeout=settings.request_timeout_s),
        )
        self._client.region = None
        self._client.edge = None
        if settings.twilio_api_base_url:
            self._client.api.base_url = settings.twilio_api_base_url.rstrip("/")

    def place_call(
        self, number: str, speech: str, question: str | None = None, *,
        incident_id: str, attempt: int,
    ) -> str:  # fmt: skip
        """Dial `number`, say `speech`, ask `question` (the language's); return the CallSid.

        The answer and the final status arrive later at `aifixer web`.

        Raises:
            PermanentError: the number is not E.164, Twilio refused the call (invalid
                number, bad credentials...), or the request is malformed.
            TransientError: Twilio could not be reached, timed out, or answered 5xx/429.
        """
        if not E164.match(number):
            raise PermanentError(SYSTEM, f"not an E.164 phone number: {number!r}")
        query = urlencode({INCIDENT_PARAM: incident_id, ATTEMPT_PARAM: attempt})
        with _translated("cannot place the call"):
            call = self._client.calls.create(
                to=number,
                from_=self.settings.twilio_from_number,
                twiml=str(
                    self.twiml(
                        speech,
                        question or QUESTIONS[self.language],
                        f"{self._url(GATHER_PATH)}?{query}",
                    )
                ),
                status_callback=f"{self._url(STATUS_PATH)}?{query}",
                status_callback_event=STATUS_EVENTS,
                status_callback_method="POST",
                timeout=self.settings.ring_timeout_s,
            )
        log.info("[%s] call %s placed to attempt %d", incident_id, call.sid, attempt)
        return call.sid

    def call_status(self, call_sid: str) -> str:
        """Twilio's status of a call (queued, ringing, in-progress, completed, no-answer...).

        Raises:
            TransientError, PermanentError: the call could not be read.
        """
        with _translated("cannot read the call"):
            return self._client.calls(call_sid).fetch().status

    def calls_since(self, number: str, since: datetime) -> list[str]:
        """The CallSids of calls to `number` created since `since`, newest first.

        Asked when a create request got no answer, or a worker died while dialling:
        Twilio may have placed the call all the same, and a number is never dialled
        twice for one incident.

        Raises:
            TransientError, PermanentError: the call list could not be read.
        """
        with _translated("cannot list calls"):
            calls = self._client.calls.list(to=number, limit=20)
        return [
            call.sid
            for call in calls
            if call.date_created is not None
            and call.date_created.timestamp() >= since.timestamp() - 1
        ]

    @property
    def language(self) -> str:
        return self.settings.call_language

    def _say(self, verb: VoiceResponse | Gather, text: str) -> None:
        """`text` said in the call's language and voice."""
        voice = self.settings.call_voice or VOICES[self.language]
        verb.say(text, language=LOCALES[self.language], voice=voice)

    def twiml(self, speech: str, question: str, gather_action: str) -> VoiceResponse:
        """The call: the speech, the question inside a Gather, a goodbye if nothing is heard.

        The Gather listens in the call's locale: the answer is transcribed in that language.
        """
        response = VoiceResponse()
        self._say(response, speech)
        gather = response.gather(
            input="speech dtmf",
            num_digits=1,
            timeout=self.settings.gather_timeout_s,
            action=gather_action,
            method="POST",
            language=LOCALES[self.language],
            action_on_empty_result=True,  # silence reaches the action too, as a "no"
            hints=SPEECH_HINTS[self.language],
        )
        self._say(gather, question)
        self._say(response, NO_ANSWER[self.language])
        response.hangup()
        return response

    def reply(self, text: str) -> str:
        """TwiML answering a Gather: say `text`, then hang up."""
        response = VoiceResponse()
        self._say(response, text)
        response.hangup()
        return str(response)

    def thanks(self, can_intervene: bool) -> str:
        """TwiML answering a Gather: thanks in the call's language, then hang up."""
        return self.reply(THANKS[(self.language, can_intervene)])

    def validator(self) -> RequestValidator:
        """Checks `X-Twilio-Signature` on the webhooks Twilio sends for our calls."""
        return RequestValidator(self.settings.twilio_auth_token.get_secret_value())

    def _url(self, path: str) -> str:
        return self.settings.public_base_url.rstrip("/") + path


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """The twilio client's errors as the adapter's two, decided once."""
    try:
        yield
    except TwilioRestException as exc:
        raise rest_error(exc) from None
    except TwilioException as exc:
        raise PermanentError(SYSTEM, f"{what}: {bounded(str(exc))}") from None
    except OSError as exc:  # requests' ConnectionError and Timeout are OSErrors
        raise TransientError(SYSTEM, f"cannot reach the API: {bounded(str(exc))}") from None


def rest_error(exc: TwilioRestException) -> TransientError | PermanentError:
    """Twilio's API error as the adapter error that says whether a retry can help."""
    message = f"{exc.method} {exc.uri} -> {exc.status} (code {exc.code}): {bounded(exc.msg)}"
    if exc.code == INVALID_TO_NUMBER:
        return PermanentError(SYSTEM, f"invalid number: {message}", status=exc.status)
    if is_transient_status(exc.status):
        return TransientError(SYSTEM, message, status=exc.status)
    return PermanentError(SYSTEM, message, status=exc.status)
