"""What text from outside may not carry into what people read or hear.

Log lines and event messages are written by whoever can make an application log a
line; the model's replies are steered by them. What aifixer writes for people — the
diagnosis (in the pull request and the call), the spoken explanation, the pull
request's title — must never relay from them:

- links, e-mail addresses or phone numbers (a call to "ring +1 555 ..." or "see
  http://..." is the attacker's, not aifixer's);
- instructions aimed at aifixer or at the engineer ("ignore previous instructions",
  "AI operator: ...", "curl ... | sh");
- advice the guardrails would refuse: privilege, host access, capabilities, root,
  service accounts, RBAC, or an image from a registry the workload never used.

`findings` names what it found, so a caller can fall back to text written from the
evidence alone (a template) and log why. Names the workload legitimately uses (its
images, its name) are passed as `known` and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_LINK = re.compile(
    r"(?i)\b(?:https?|ftp|file|s3|gs|ssh|git)://\S+"
    r"|\bwww\.\S+"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\."
    r"(?:com|net|org|io|dev|app|xyz|ru|cn|tk|top|me|co|info|biz|cloud|link|site|online)"
    r"\b(?:[/:]\S*)?"
)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# Seven or more digits, with the separators people write numbers with.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d(?:[\s().-]{0,2}\d){6,}(?![\w.])")
_SPELLED_PLUS = re.compile(r"(?i)\bplus\s+(?:one|\d)\b")

_INSTRUCTION = re.compile(
    r"(?i)\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+|the\s+|your\s+|previous\s+|"
    r"prior\s+|above\s+|earlier\s+)*(?:instructions?|rules?|prompts?|guardrails?|checks?)"
    r"|\b(?:ai|llm)\s+(?:operator|assistant|agent|fixer|model)s?\b"
    r"|\bas\s+an\s+ai\b|\bsystem\s+prompt\b|\bnew\s+instructions?\b|\bassistant\s*:"
    r"|\b(?:curl|wget|nc|netcat|ncat|socat|base64\s+-d)\b"
    r"|\|\s*(?:ba|z|da)?sh\b"
    r"|\b(?:call|ring|phone|text|sms|whatsapp|page|contact)\s+(?:me|us|him|her|them|"
    r"this\s+number|the\s+number|back|(?:the\s+)?(?:admin|vendor|support|security)\b)"
)

_PRIVILEGE = re.compile(
    r"(?i)\bprivileged?\b|\bprivileges?\b|\bprivilege\s*escalation\b"
    r"|\ballow\s*privilege\s*escalation\b|\ballowPrivilegeEscalation\b"
    r"|\bhost\s*(?:network|pid|ipc|path|port|ports|namespace|filesystem|mount)s?\b"
    r"|\bhost(?:Network|PID|IPC|Path|Port)\b"
    r"|\bcapabilit(?:y|ies)\b|\bCAP_[A-Z_]+\b|\bSYS_(?:ADMIN|PTRACE|MODULE)\b|\bNET_ADMIN\b"
    r"|\b(?:run|running|runs)\s+as\s+root\b|\bas\s+(?:the\s+)?root(?:\s+user)?\b"
    r"|\brunAsUser\s*[:=]?\s*0\b|\brunAsNonRoot\s*[:=]?\s*false\b|\broot\s+(?:user|access)\b"
    r"|\bsecurity\s*context\b|\bsecurityContext\b|\bservice\s*accounts?\b|\bserviceAccount\w*"
    r"|\bcluster-?admin\b|\bcluster\s*role\w*|\brole\s*bindings?\b|\bRBAC\b|\bsudo\b"
    r"|\b(?:disable|turn\s+off|bypass|skip)\s+(?:the\s+)?(?:security|safety|guardrails?|"
    r"checks?|policy|policies|seccomp|apparmor|selinux)\b"
)

# An image reference: "registry.host/repo[:tag]", or "org/repo:tag" (a file path has
# neither a registry host nor a tag).
_IMAGE = re.compile(
    r"(?<![/\w.-])(?:[a-z0-9-]+\.[a-z0-9.-]+(?::\d+)?/[a-z0-9._/-]+(?::[\w.-]+)?"
    r"|[a-z0-9][a-z0-9._-]*/[a-z0-9._/-]+(?::[\w.-]+|@sha256:[0-9a-f]+))"
)
# Dates and times are numbers too, but not phone numbers.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?Z?)?")


def findings(text: str, known: Iterable[str] = ()) -> list[str]:
    """What in `text` must not reach a person: empty when nothing.

    Args:
        text: what aifixer is about to write or say.
        known: strings the workload itself uses (its images, names), ignored.
    """
    for word in sorted({k for k in known if k}, key=len, reverse=True):
        # Whole references only: the workload's name inside another image
        # ("shop/web" in "evil.example/shop/web:1") does not make that image known.
        text = re.sub(rf"(?<![\w./:@-]){re.escape(word)}(?![\w/:@-]|\.\w)", " ", text)
    text = _DATE.sub(" ", text)
    found = []
    for label, pattern in (
        ("a link", _LINK),
        ("an e-mail address", _EMAIL),
        ("a phone number", _PHONE),
        ("a phone number", _SPELLED_PLUS),
        ("an instruction", _INSTRUCTION),
        ("advice the guardrails refuse", _PRIVILEGE),
        ("an image the workload never ran", _IMAGE),
    ):
        match = pattern.search(text)
        if match and label not in found:
            found.append(label)
    return found


def is_clean(text: str, known: Iterable[str] = ()) -> bool:
    return not findings(text, known)
