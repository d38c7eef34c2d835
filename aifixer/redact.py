"""One redaction policy for everything that leaves the farm.

Whatever aifixer reads can carry a credential: a log line that prints a connection
string, an event quoting a failed login, a manifest's env literal. `redact` is applied
wherever such text leaves the process — the model's prompt (the model may be a remote
API), the pull request (title, body, commit message), the call's speech and the call
file, the farm's logs (a filter on every handler) — so the rules live here, once, and
one corpus (tests/unit/test_redact.py) holds them to account.

The rules, in order:
1. blocks: PEM private keys (RSA, EC, OpenSSH, PGP ...);
2. tokens whose shape is their provider's (GitHub, GitLab, Slack, Stripe, AWS, Google,
   OpenAI, Anthropic, Hugging Face, Twilio, SendGrid, npm, PyPI, Vault, JWTs ...);
3. credentials in URLs (`scheme://user:password@host`, `?token=...`) and in
   connection strings (`AccountKey=...`, `Password=...`);
4. a value after a credential-like name, in `key=value`, `key: value`, JSON and
   header forms (`DB_PASS=...`, `"api_key": "..."`, `Authorization: Bearer ...`),
   and in prose ("the password is ...");
5. long random-looking strings: hex of 32+ digits (a `sha256:` digest stays, it is
   public), and base64 blobs of 24+ characters that mix cases and digits.

A false positive costs a word in a PR; a false negative leaks a credential: the rules
lean to the first.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

# A whole block, or a torn one (no END line): its base64 lines up to the first other text.
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END \1-----|[\sA-Za-z0-9+/=:-]*)",
    re.S,
)

# Provider-shaped tokens: matched anywhere, whatever surrounds them.
_TOKENS = re.compile(
    "|".join(
        [
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
            r"\bgl(?:dt|rt|ptt|cbt|soat)-[A-Za-z0-9_-]{20,}",
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"\bhooks\.slack\.com/services/[A-Za-z0-9/]+",
            r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
            r"\bwhsec_[A-Za-z0-9]{20,}",
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",  # AWS key ids
            r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
            r"\bya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth access token
            r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}",  # OpenAI, Anthropic
            r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
            r"\b(?:AC|SK)[0-9a-fA-F]{32}\b",  # Twilio account and key sids
            r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",  # SendGrid
            r"\bkey-[0-9a-z]{32}\b",  # Mailgun
            r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
            r"\bpypi-[A-Za-z0-9_-]{50,}",  # PyPI
            r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}",  # Vault
            r"\bdop_v1_[0-9a-f]{64}\b",  # DigitalOcean
            r"\bshp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}\b",  # Shopify
            r"\bdapi[0-9a-f]{32}\b",  # Databricks
            r"\bgl(?:c|sa)_[A-Za-z0-9_+/=-]{20,}",  # Grafana
            r"\bNRAK-[A-Z0-9]{27}\b",  # New Relic
            r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b",  # age
            r"\b\d{8,10}:AA[0-9A-Za-z_-]{33}\b",  # Telegram bot
            r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,}",  # Square
            r"\blin_api_[A-Za-z0-9]{40}\b",  # Linear
            r"\bPMAK-[0-9a-f]{24}-[0-9a-f]{34}\b",  # Postman
            r"\bdp\.(?:st|ct|sa)\.[A-Za-z0-9_.-]{20,}",  # Doppler
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
        ]
    )
)

# user:password@ in any URL, and credentials in a query string.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+(?=@)")
_URL_USER_KEY = re.compile(r"(https?://)[0-9a-f]{24,}(?=@)")  # Sentry-style DSN
_QUERY = re.compile(
    r"([?&](?:access_?token|token|key|api_?key|secret|sig|signature|password|pwd|auth)=)"
    r"[^&\s\"'#]+",
    re.I,
)

# A value after a credential-like name: `NAME=value`, `name: value`, `"name": "value"`.
_NAME = (
    r"[\w.-]*(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|credentials?|auth(?:orization)?|cookie|session[_-]?id|"
    r"accountkey|sharedaccesskey|client[_-]?secret|signing[_-]?key|dsn)"
)
_KEY_VALUE = re.compile(
    rf"""(\b(?:{_NAME}|[\w.-]+[_-]key)["']?\s*[=:]\s*"""
    r"""(?:(?:Bearer|Basic|Token|Digest)\s+)?)(?!["']?\[redacted\])"""
    r"""(?:(?P<q>["'])[^"'\n]{1,200}(?P=q)|[^\s"',;&<>]{3,})""",
    re.I,
)
# Bare scheme credentials, wherever they appear.
_SCHEME = re.compile(r"(\b(?:Bearer|Basic)\s+)(?!\[redacted\])[\w.~+/=-]{8,}", re.I)
# Prose: "the password is hunter2", "token was: abc", "passphrase -> xyz".
_PROSE = re.compile(
    r"(\b(?:password|passwd|passphrase|secret|token|api key|access key|credentials?)"
    r"\s+(?:is|was|->|set to)\s*:?\s*[\"']?)(?!\[redacted\])[^\s\"',;]{3,}",
    re.I,
)

_HEX = re.compile(r"(?<![\w:])[0-9a-fA-F]{32,}\b")  # a `sha256:` digest is public
_BLOB = re.compile(r"(?<![\w/+=.-])[A-Za-z0-9+/_-]{24,}={0,2}(?![\w/+=-])")
# Twilio's call, number and recording sids are ids, not credentials: kept for operators.
_PUBLIC_ID = re.compile(r"(?:CA|PN|RE|CF|SM)[0-9a-f]{32}")


def redact(text: str) -> str:
    """`text` without anything that looks like a key, token, password or credential."""
    if not text:
        return text
    text = _PEM.sub(REDACTED, text)
    text = _TOKENS.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_USER_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m['q'] or ''}{REDACTED}{m['q'] or ''}", text)
    text = _SCHEME.sub(lambda m: m.group(1) + REDACTED, text)
    text = _PROSE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _HEX.sub(_hex, text)
    return _BLOB.sub(_blob, text)


def _hex(match: re.Match[str]) -> str:
    return match.group(0) if _PUBLIC_ID.fullmatch(match.group(0)) else REDACTED


def _blob(match: re.Match[str]) -> str:
    word = match.group(0)
    return REDACTED if looks_random(word) and not _PUBLIC_ID.fullmatch(word) else word


def looks_random(word: str) -> bool:
    """Base64 of a secret mixes cases and digits throughout; a long word, a path or a
    `Kind/name-7d9f` reference has one capital or two."""
    return (
        sum(c.isdigit() for c in word) >= (1 if len(word) >= 32 else 2)
        and sum(c.isupper() for c in word) >= 3
        and any(c.islower() for c in word)
    )


def redacted(value):
    """`value` with every string inside it redacted (mappings, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message (with its arguments) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the caller's; keep it
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a `RedactingFilter` on every handler of `logger` (the root by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
