"""The demo's report: one HTML page of what happened in each scenario, readable after the
sandbox is gone.

`DemoReport.keep` is the harness's hook (`run_scenario(keep=...)`): while the world is
still up it reads the pull requests through the forge's GitHub-compatible REST API
(title, body, each file's patch), the calls through the phone's inspection view, their
spoken audio (one WAV per <Say>, copied next to the report), and the call file. `write`
renders everything collected so far into `report.html`: per incident the stages with
their timings, the evidence, the diagnosis, the fix, the pull request's body (Markdown)
and diff, the calls with their transcripts and audio; per monitoring scenario the level
changes, the scaling decisions and the plot.

Everything shown comes from untrusted sources — log lines and events written by
whatever runs in the cluster, the model's text, pull request bodies — so every value is
HTML-escaped (and passed through `aifixer.redact`), Markdown is rendered with raw HTML
off and images off, and the page's Content-Security-Policy allows no script, no
network and nothing but inline styles, embedded images and its own audio files.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from markdown_it import MarkdownIt

from aifixer import grounding
from aifixer.models import IncidentState
from aifixer.redact import redact

from . import timeline

if TYPE_CHECKING:
    from .harness import FarmRun

REPORT_NAME = "report.html"
AUDIO_DIR = "audio"

# Bounds: the report shows what a person reads, not everything the farm kept.
MAX_SIGNALS = 8
MAX_LOG_LINES = 20
MAX_EVENTS = 12
MAX_PODS = 6
MAX_POD_LOGS = 4
MAX_POD_LOG_LINES = 20
MAX_LINE = 400
MAX_DECISIONS = 20
MAX_CALL_LINES = 20
MAX_DIFF_LINES = 400
MAX_BODY = 20_000

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "media-src 'self' file:; base-uri 'none'; form-action 'none'"
)

# Raw HTML off (it is shown as text), images off (no fetch when the page opens).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).disable("image")
_COMMENT_LINE = re.compile(r"^[ \t]*<!--(?:(?!-->)[^\n])*-->[ \t]*(?:\n|$)", re.M)


class CollectError(RuntimeError):
    """The sandbox did not answer what the report needs."""


# -- collecting, while the world is up -------------------------------------------------


def _get(url: str, token: str | None = None, **params: Any) -> Any:
    headers = {"Accept": "application/vnd.github+json"}
    if token:
        headers["Authorization"] = f"token {token}"
    try:
        resp = requests.get(url, headers=headers, params=params, timeout=30)
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise CollectError(f"{urlsplit(url).path}: {type(exc).__name__}") from None
    return resp


def pull_requests(api: str, repo: str, token: str) -> list[dict[str, Any]]:
    """Every pull request of `repo` with its files' patches, through the REST API."""
    pulls = _get(f"{api}/repos/{repo}/pulls", token, state="all", per_page=100).json()
    out = []
    for pr in pulls:
        files = _get(f"{api}/repos/{repo}/pulls/{pr['number']}/files", token, per_page=100).json()
        out.append(
            {
                "number": pr["number"],
                "title": pr.get("title") or "",
                "body": pr.get("body") or "",
                "state": pr.get("state"),
                "draft": bool(pr.get("draft")),
                "url": pr.get("html_url"),
                "head": (pr.get("head") or {}).get("ref"),
                "base": (pr.get("base") or {}).get("ref"),
                "files": [
                    {
                        "filename": f.get("filename"),
                        "status": f.get("status"),
                        "additions": f.get("additions"),
                        "deletions": f.get("deletions"),
                        "patch": f.get("patch") or "",
                    }
                    for f in files
                ],
            }
        )
    return out


def phone_calls(twilio_base: str, audio_dir: Path, prefix: str) -> list[dict[str, Any]]:
    """The calls as the phone stand-in recorded them; each <Say>'s WAV downloaded into
    `audio_dir`, its `audio` the path relative to the report (`prefix`/file)."""
    calls = _get(f"{twilio_base}/sandbox/calls").json()
    for call in calls:
        for event in call.get("events") or []:
            if event.get("type") != "say" or not event.get("wav"):
                continue
            name = Path(event["wav"]).name  # NN.wav, as the phone serves it
            if not re.fullmatch(r"[0-9]+\.wav", name):
                continue
            resp = _get(f"{twilio_base}/sandbox/calls/{call['sid']}/{name}")
            local = f"{call['sid']}-{name}"
            audio_dir.mkdir(parents=True, exist_ok=True)
            (audio_dir / local).write_bytes(resp.content)
            event["audio"] = f"{prefix}/{local}"
    return calls


def call_file_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _forget_audio(audio: Path) -> None:
    """The audio of an earlier report goes with it (only the files it wrote)."""
    if not audio.is_dir():
        return
    for folder in audio.iterdir():
        if not folder.is_dir() or not re.fullmatch(r"[0-9]{2}-[A-Za-z0-9._-]+", folder.name):
            continue
        for wav in folder.iterdir():
            if re.fullmatch(r"CA[0-9a-f]{32}-[0-9]+\.wav", wav.name):
                wav.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "scenario"


class DemoReport:
    """What the demo's scenarios left behind, collected as each ends, and its page."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.scenarios: list[dict[str, Any]] = []
        self.started = datetime.now(UTC)
        _forget_audio(self.out_dir / AUDIO_DIR)

    def keep(self, run: FarmRun, states: list[IncidentState], report: dict[str, Any]) -> None:
        """The harness hook: read the forge, the phone and the call file before they go."""
        sc = run.scenario
        ep = run.world.endpoints
        slug = f"{len(self.scenarios) + 1:02d}-{_slug(sc.name)}"
        entry: dict[str, Any] = {
            "name": sc.name,
            "description": sc.description,
            "expect": sc.expect.describe(),
            "report": report,
            "states": states,
            "plots": [],
            "problems": [],
        }
        repos = {ep.gitops_repo} | {
            s.pull_request.repo for s in states if s.pull_request and s.pull_request.repo
        }
        entry["gitops_repo"] = ep.gitops_repo
        entry["pulls"] = []
        for repo in sorted(repos):
            try:
                found = pull_requests(ep.github_api, repo, ep.github_token)
            except CollectError as exc:
                entry["problems"].append(f"pull requests of {repo} not read: {exc}")
                continue
            entry["pulls"] += [{**pr, "repo": repo} for pr in found]
        try:
            entry["calls"] = phone_calls(
                ep.twilio_base, self.out_dir / AUDIO_DIR / slug, f"{AUDIO_DIR}/{slug}"
            )
        except CollectError as exc:
            entry["calls"] = []
            entry["problems"].append(f"calls not read: {exc}")
        entry["call_file"] = call_file_lines(Path(run.env["AIFIXER_CALL_FILE"]))
        self.scenarios.append(entry)

    def add_plots(self, name: str, paths: list[Path]) -> None:
        for entry in reversed(self.scenarios):
            if entry["name"] == name:
                entry["plots"].extend(Path(p) for p in paths)
                return

    def write(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / REPORT_NAME
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(render(self.scenarios, self.started), encoding="utf-8")
        tmp.replace(path)
        return path


# -- rendering -----------------------------------------------------------------------


def t(value: Any, limit: int | None = None) -> str:
    """Untrusted text as HTML text: redacted, clipped, escaped."""
    text = redact("" if value is None else str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def markdown(text: str) -> str:
    """A pull request body as HTML: raw HTML in it stays text, images are not loaded.

    A line that is one HTML comment (a marker for machines, which GitHub hides) is left
    out; any other HTML is shown as the text it is.
    """
    text = _COMMENT_LINE.sub("", redact(text))
    if len(text) > MAX_BODY:
        text = text[:MAX_BODY] + "\n\n… (cut)"
    return _MARKDOWN.render(text)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    return f"{int(value) // 60} min {int(value) % 60} s"


def _badge(outcome: str | None) -> str:
    kind = outcome if outcome in ("fixed", "called", "rejected", "error", "recovered") else "open"
    return f'<span class="badge {kind}">{t(outcome or "unfinished")}</span>'


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%H:%M:%S")


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """`rows` hold HTML already escaped; `head` is plain text."""
    if not rows:
        return ""
    th = "".join(f"<th>{t(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _more(shown: int, total: int) -> str:
    return f'<p class="more">… {total - shown} more not shown</p>' if total > shown else ""


def _timeline(state: IncidentState) -> str:
    steps = timeline.passed(state)
    longest = max((s["seconds"] or 0 for s in steps if not s["stage"].startswith("closed")),
                  default=0) or 1  # fmt: skip
    rows = []
    for s in steps:
        closing = s["stage"].startswith("closed")
        width = 0 if closing or not s["seconds"] else max(2, round(100 * s["seconds"] / longest))
        bar = f'<span class="bar" style="width:{width}%"></span>' if width else ""
        at = "" if s["at"] is None else f"+{_seconds(s['at'])}"
        rows.append(
            f'<li class="step{" closed" if closing else ""}">'
            f'<span class="name">{t(s["stage"])}</span>'
            f'<span class="took">{t(_seconds(s["seconds"]))}{bar}</span>'
            f'<span class="at">{t(at)}</span>'
            f'<span class="detail">{t(s["detail"], 200)}</span></li>'
        )
    usage = ""
    if state.model_usage:
        parts = [
            f"{t(stage)}: {u.prompt_tokens}+{u.completion_tokens} tokens, {_seconds(u.seconds)}"
            for stage, u in state.model_usage.items()
        ]
        usage = f'<p class="note">model ({t(state.model_used)}): {"; ".join(parts)}</p>'
    return (
        '<section class="timeline"><h4>Timeline</h4>'
        '<ol class="steps"><li class="step head"><span class="name">stage</span>'
        '<span class="took">took</span><span class="at">after opening</span>'
        '<span class="detail"></span></li>' + "".join(rows) + f"</ol>{usage}</section>"
    )


def _evidence(state: IncidentState) -> str:
    inc, ev = state.incident, state.evidence
    parts = ['<section class="evidence"><h4>Evidence</h4>',
             '<p class="note">Untrusted: as read from the cluster and Loki.</p>']  # fmt: skip
    sigs = inc.signals[:MAX_SIGNALS]
    parts.append("<h5>Signals that opened it</h5>")
    parts.append(
        _table(
            ["source", "reason", "pod", "message"],
            [[t(s.source), t(s.reason), t(s.pod or "-"), t(s.message, MAX_LINE)] for s in sigs],
            "signals",
        )
        + _more(len(sigs), len(inc.signals))
    )
    if ev is None:
        parts.append("<p>No evidence was gathered.</p></section>")
        return "".join(parts)
    if ev.logs:
        shown = ev.logs[-MAX_LOG_LINES:]
        lines = "".join(
            f'<li class="log-line"><span class="ts">{t(x.time[11:19])}</span> '
            f'<span class="pod">{t(x.pod)}/{t(x.container)}</span> '
            f"<code>{t(x.line, MAX_LINE)}</code></li>"
            for x in shown
        )
        parts.append(f'<h5>Log lines (Loki, newest last)</h5><ol class="logs">{lines}</ol>')
        parts.append(_more(len(shown), len(ev.logs)))
    if ev.events:
        # Warnings first: they say what is wrong; the rest is the rollout's routine.
        ordered = sorted(ev.events, key=lambda e: e.type != "Warning")
        shown_events = ordered[:MAX_EVENTS]
        parts.append("<h5>Events</h5>")
        parts.append(
            _table(
                ["type", "reason", "object", "count", "message"],
                [
                    [t(e.type), t(e.reason), t(e.object), t(e.count), t(e.message, MAX_LINE)]
                    for e in shown_events
                ],  # fmt: skip
                "events",
            )
        )
        parts.append(_more(len(shown_events), len(ev.events)))
    if ev.pods:
        parts.append("<h5>Pods</h5>")
        parts.append(
            _table(
                ["pod", "phase", "ready", "restarts", "reasons"],
                [
                    [
                        t(p.name),
                        t(p.phase),
                        "yes" if p.ready else "no",
                        t(p.restart_count),
                        t(", ".join(p.reasons) or "-"),
                    ]
                    for p in ev.pods[:MAX_PODS]
                ],  # fmt: skip
                "pods",
            )
            + _more(min(len(ev.pods), MAX_PODS), len(ev.pods))
        )
    if ev.pod_logs:
        blocks = []
        for key, text in list(ev.pod_logs.items())[:MAX_POD_LOGS]:
            tail = "\n".join(line[:MAX_LINE] for line in text.splitlines()[-MAX_POD_LOG_LINES:])
            blocks.append(f"<h6>{t(key)}</h6><pre>{t(tail)}</pre>")
        parts.append(
            "<details><summary>Container logs (pods/log, last lines)</summary>"
            + "".join(blocks)
            + "</details>"
        )
    parts.append("</section>")
    return "".join(parts)


def _diagnosis_and_fix(state: IncidentState) -> str:
    parts = ['<section class="diagnosis"><h4>Diagnosis</h4>']
    d, refused = grounding.shown(state) if state.diagnosis is not None else (None, [])
    if d is None:
        parts.append("<p>None.</p>")
    else:
        if refused:  # as the pull request shows it: written from the facts
            parts.append(
                '<p class="note">The recorded diagnosis is not shown: '
                f"{t('; '.join(refused), 600)}.</p>"
            )
        fields = ", ".join(f"<code>{t(f)}</code>" for f in d.fields) or "-"
        parts.append(
            f'<p class="summary">{t(d.summary, 2000)}</p>'
            f"<dl><dt>root cause</dt><dd>{t(d.root_cause, 2000)}</dd>"
            f"<dt>failure class</dt><dd>{t(d.failure_class)}</dd>"
            f"<dt>by</dt><dd>{t(d.source)}</dd><dt>fields</dt><dd>{fields}</dd></dl>"
        )
    p = state.proposal
    if p is not None:
        rows = [[f"<code>{t(c.path)}</code>", f"<code>{t(_value(c.before), 200)}</code>",
                 f"<code>{t(_value(c.after), 200)}</code>"] for c in p.changes]  # fmt: skip
        parts.append(
            f"<h4>Fix</h4><p>{t(p.source)} / <b>{t(p.strategy)}</b>: {t(p.rationale, 1000)}</p>"
            + _table(["field", "before", "after"], rows, "changes")
        )
    if state.rejections:
        items = "".join(
            f"<li>{t(r.source)} / {t(r.strategy)}: {t('; '.join(r.reasons), 600)}</li>"
            for r in state.rejections[:10]
        )
        parts.append(f"<h5>Refused by the guardrails</h5><ul>{items}</ul>")
    v = state.verification
    if v is not None:
        verdict = "passed" if v.ok else "failed" + (", rolled back" if v.rolled_back else "")
        parts.append(
            f'<h4>Verification</h4><p><span class="verdict {"ok" if v.ok else "bad"}">'
            f"{t(verdict)}</span> {t(v.reason, 1000)}</p>"
        )
    if state.error:
        parts.append(f'<p class="error">{t(state.error, 1000)}</p>')
    if state.pr_error:
        parts.append(f'<p class="error">pull request: {t(state.pr_error, 1000)}</p>')
    parts.append("</section>")
    return "".join(parts)


def _value(v: Any) -> str:
    if v is None:
        return "(absent)"
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _diff(patch: str) -> str:
    lines = patch.splitlines()
    out = []
    for line in lines[:MAX_DIFF_LINES]:
        cls = (
            "hunk" if line.startswith("@@")
            else "add" if line.startswith("+")
            else "del" if line.startswith("-")
            else "ctx"
        )  # fmt: skip
        out.append(f'<span class="{cls}">{t(line) or " "}</span>')
    more = _more(MAX_DIFF_LINES, len(lines))
    return f'<pre class="diff">{"".join(out)}</pre>{more}'


def _pull_request(pr: dict[str, Any]) -> str:
    files = "".join(
        f'<div class="file"><div class="file-head"><code>{t(f["filename"])}</code> '
        f'<span class="add">+{t(f["additions"])}</span> '
        f'<span class="del">−{t(f["deletions"])}</span></div>{_diff(f["patch"])}</div>'
        for f in pr["files"]
    )
    return (
        f'<section class="pr" data-pr="{t(pr["number"])}"><h4>'
        f"{'Draft pull request' if pr.get('draft') else 'Pull request'} #{t(pr['number'])}: "
        f'{t(pr["title"], 300)}</h4><p class="note">{t(pr["head"])} → {t(pr["base"])} · '
        f"{t(pr['state'])} · {t(pr['url'])}</p>"
        f'<div class="columns"><div class="pr-body">{markdown(pr["body"])}</div>'
        f'<div class="pr-files"><h5>Files changed</h5>{files}</div></div></section>'
    )


def _transcript(call: dict[str, Any]) -> str:
    """What was said and heard, in order; the call's progress and requests as notes."""
    items: list[str] = []
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)

    def flush() -> None:
        if notes:
            items.append(f'<li class="progress"><span></span><span>{" · ".join(notes)}</span></li>')
            notes.clear()

    def line(cls: str, who: str, what: str) -> None:
        flush()
        items.append(f'<li class="{cls}"><span class="who">{who}</span><div>{what}</div></li>')

    for e in call.get("events") or []:
        kind = e.get("type")
        if kind == "say":
            audio = e.get("audio")
            player = (
                f'<audio controls preload="metadata" src="{t(audio)}"></audio>' if audio else ""
            )
            line("say", "aifixer", f"<q>{t(e.get('text'), 2000)}</q>{player}")
        elif kind == "gather":
            heard = e.get("heard") or {}
            said = heard.get("SpeechResult") or heard.get("Digits")
            line("gather", "engineer", f"<q>{t(said)}</q>" if said else "<i>nothing heard</i>")
        elif kind == "progress":
            note(t(e.get("event")))
        elif kind == "pause":
            note(f"pause {t(e.get('seconds'))} s")
        elif kind == "request":
            path = urlsplit(str(e.get("url") or "")).path
            note(f"{t(e.get('method'))} {t(path)} → {t(e.get('http_status'))}")
        elif kind in ("hangup", "error", "warning", "unsupported", "sandbox-error"):
            note(f"{t(kind)} {t(e.get('message') or '')}".strip())
    flush()
    return f'<ol class="transcript">{"".join(items)}</ol>'


def _call(call: dict[str, Any], record: Any) -> str:
    answer = call.get("answer")
    verdict = ""
    if record is not None:
        verdict = (
            '<span class="verdict ok">can intervene</span>'
            if record.can_intervene
            else '<span class="verdict bad">cannot intervene</span>'
        )
    return (
        f'<div class="call" data-call="{t(call.get("sid"))}"><div class="call-head">'
        f"<b>{t(call.get('to'))}</b> · {t(call.get('status'))} · "
        f"{t(call.get('duration') or 0)} s · heard: {t(answer or '-')} {verdict}</div>"
        f"{_transcript(call)}</div>"
    )


def _calls(state: IncidentState, calls: list[dict[str, Any]], lines: list[str]) -> str:
    by_sid = {c.call_sid: c for c in state.calls if c.call_sid}
    mine = [c for c in calls if c.get("sid") in by_sid]
    if not mine and state.speech is None:
        return ""
    parts = ['<section class="calls"><h4>Phone calls</h4>']
    if state.speech:
        parts.append(f'<p class="speech"><b>What was said:</b> {t(state.speech, 3000)}</p>')
    parts += [_call(c, by_sid.get(c.get("sid"))) for c in mine]
    own = [ln for ln in lines if _line_incident(ln) == state.incident.id]
    if own:
        shown = own[-MAX_CALL_LINES:]
        parts.append(
            f"<h5>Call file ({len(own)} line{'s' if len(own) != 1 else ''})</h5>"
            f'<pre class="callfile">{t(chr(10).join(shown))}</pre>'
        )
    parts.append("</section>")
    return "".join(parts)


def _line_incident(line: str) -> str | None:
    try:
        return json.loads(line).get("incident_id")
    except (ValueError, AttributeError):
        return None


def _incident(entry: dict[str, Any], state: IncidentState, anchor: str) -> str:
    inc = state.incident
    ref = state.pull_request
    pulls = []
    if ref is not None:
        repo = ref.repo or entry.get("gitops_repo")
        pulls = [p for p in entry["pulls"]
                 if p["number"] == ref.number and p.get("repo", repo) == repo]  # fmt: skip
    return (
        f'<article class="incident" id="{anchor}" data-incident="{t(inc.id)}">'
        f"<h3>{t(inc.workload.key)} {_badge(state.outcome)} "
        f'<span class="cls">{t(inc.failure_class)}</span>'
        f'<span class="when">opened {_when(inc.opened_at)} UTC</span></h3>'
        f'<div class="columns">{_timeline(state)}{_diagnosis_and_fix(state)}</div>'
        f"{_evidence(state)}"
        + "".join(_pull_request(p) for p in pulls)
        + _calls(state, entry["calls"], entry["call_file"])
        + "</article>"
    )


def _monitoring(entry: dict[str, Any]) -> str:
    rep = entry["report"]
    if not rep.get("levels") and not rep.get("scaling"):
        return ""
    parts = ['<section class="monitoring"><h4>Monitoring</h4>']
    if rep.get("levels"):
        rows = [
            [t(f"{x['namespace']}/{x['pod']}"),
             " → ".join(f'<span class="level">{t(v)}</span>' for v in x["values"])]
            for x in rep["levels"]
        ]  # fmt: skip
        parts.append("<h5>CPU level label (aifixer.io/cpu-level)</h5>")
        parts.append(_table(["pod", "values, in order"], rows, "levels"))
    for key, decisions in (rep.get("scaling") or {}).items():
        changed = [d for d in decisions if d["replicas_after"] != d["replicas_before"]]
        shown = (changed or decisions)[-MAX_DECISIONS:]
        rows = [
            [
                t(datetime.fromtimestamp(d["at"], UTC).strftime("%H:%M:%S")),
                t(d["mode"]),
                t("-" if d["current_cores"] is None else f"{d['current_cores']:.3f}"),
                t("-" if d["peak_cores"] is None else f"{d['peak_cores']:.3f}"),
                t(f"{d['replicas_before']} → {d['replicas_after']}"),
                t(d["reason"], 300),
            ]
            for d in shown
        ]
        parts.append(
            f"<h5>Scaling decisions for {t(key)}: {len(decisions)}, "
            f"{len(changed)} changed the replicas</h5>"
        )
        parts.append(_table(["time", "mode", "now (cores)", "peak (cores)", "replicas", "why"],
                            rows, "decisions"))  # fmt: skip
    for plot in entry["plots"]:
        try:
            data = base64.b64encode(Path(plot).read_bytes()).decode()
        except OSError:
            continue
        parts.append(
            f'<figure><img class="plot" alt="load, forecast and capacity" '
            f'src="data:image/png;base64,{data}"><figcaption>{t(Path(plot).name)}</figcaption>'
            "</figure>"
        )
    if rep.get("missing"):
        items = "".join(f"<li>{t(m)}</li>" for m in rep["missing"])
        parts.append(f'<p class="error">not reached:</p><ul>{items}</ul>')
    parts.append("</section>")
    return "".join(parts)


def _summary(scenarios: list[dict[str, Any]]) -> str:
    rows = []
    for i, entry in enumerate(scenarios, 1):
        rep = entry["report"]
        states = entry["states"]
        if not states:
            what = "monitoring" if rep.get("levels") or rep.get("scaling") else "no incident"
            outcome = (
                '<span class="badge fixed">reached</span>'
                if rep.get("complete")
                else '<span class="badge error">not reached</span>'
            )
            rows.append([f'<a href="#sc-{i}">{t(entry["name"])}</a>', "-", t(what), outcome,
                         t(entry["expect"]), "", t(_seconds(rep.get("duration_s")))])  # fmt: skip
        for j, s in enumerate(states, 1):
            after = (
                _seconds((s.closed_at - s.incident.opened_at).total_seconds())
                if s.closed_at
                else ""
            )
            if s.pull_request:
                draft = "draft " if s.pull_request.draft else ""
                where = f"{draft}PR #{s.pull_request.number}"
            else:
                where = ", ".join("yes" if c.can_intervene else "no" for c in s.calls)
                where = f"calls: {where}" if where else "-"
            rows.append(
                [
                    f'<a href="#inc-{i}-{j}">{t(entry["name"])}</a>',
                    t(s.incident.workload.key),
                    t(s.incident.failure_class),
                    _badge(s.outcome),
                    t(entry["expect"]),
                    t(where),
                    t(after),
                ]
            )
    return _table(
        ["scenario", "workload", "failure class", "outcome", "expected", "PR / answers",
         "to outcome"],
        rows,
        "summary",
    )  # fmt: skip


def _scenario(i: int, entry: dict[str, Any]) -> str:
    rep = entry["report"]
    status = "complete" if rep.get("complete") else "incomplete"
    parts = [
        f'<section class="scenario" id="sc-{i}"><h2>{t(entry["name"])}'
        f'<span class="expect">expect {t(entry["expect"])}</span>'
        f'<span class="when">{t(_seconds(rep.get("duration_s")))}, {status}</span></h2>',
        f'<p class="desc">{t(entry["description"])}</p>',
    ]
    for problem in entry["problems"]:
        parts.append(f'<p class="error">{t(problem)}</p>')
    if not entry["states"] and not (rep.get("levels") or rep.get("scaling")):
        parts.append('<p class="error">No incident was opened.</p>')
    for j, state in enumerate(entry["states"], 1):
        parts.append(_incident(entry, state, f"inc-{i}-{j}"))
    parts.append(_monitoring(entry))
    parts.append("</section>")
    return "".join(parts)


def render(scenarios: list[dict[str, Any]], started: datetime) -> str:
    models = sorted({str(e["report"].get("model")) for e in scenarios if e["report"].get("model")})
    stub = (
        '<p class="note">"stub" is the stand-in model endpoint (a test double that answers '
        "from the playbook candidates), not a language model.</p>"
        if "stub" in models
        else ""
    )
    body = "".join(_scenario(i, e) for i, e in enumerate(scenarios, 1))
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>aifixer demo report</title><style>{STYLE}</style></head><body>"
        f"<header><h1>aifixer demo</h1><p>{len(scenarios)} scenario(s), started "
        f"{started.strftime('%Y-%m-%d %H:%M:%S')} UTC · model: {t(', '.join(models) or '-')}"
        f"</p>{stub}</header><main>"
        f'<section class="overview"><h2>Incidents</h2>{_summary(scenarios)}</section>'
        f"{body}</main></body></html>\n"
    )


STYLE = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--card:#fff;
--ok:#1a7f37;--okbg:#dafbe1;--bad:#cf222e;--badbg:#ffebe9;--warn:#9a6700;--warnbg:#fff8c5;
--blue:#0969da;--bluebg:#ddf4ff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",
"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#24292f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#d0d7de}
header .note{color:#d0d7de}
main{max-width:1280px;margin:0 auto;padding:16px 32px 48px}
h2{font-size:20px;margin:28px 0 8px;display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
h3{font-size:17px;margin:0 0 12px;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
h4{font-size:14px;margin:16px 0 6px;text-transform:uppercase;letter-spacing:.04em;
color:var(--muted)}
h5{font-size:13px;margin:12px 0 4px}h6{font-size:12px;margin:8px 0 2px;color:var(--muted)}
.expect,.when,.cls{font-size:13px;font-weight:normal;color:var(--muted)}
.cls{background:var(--bluebg);color:var(--blue);padding:1px 8px;border-radius:10px}
.desc{color:var(--muted);max-width:900px;margin:0 0 12px}
.overview h2{margin-top:0}
.incident,.overview{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:16px 20px;margin:12px 0}
.monitoring{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:4px 20px 16px;margin:12px 0}
.columns{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:24px}
@media (max-width:900px){.columns{grid-template-columns:1fr}}
.badge{font-size:12px;font-weight:600;padding:2px 10px;border-radius:10px;
background:var(--warnbg);color:var(--warn)}
.badge.fixed,.badge.recovered{background:var(--okbg);color:var(--ok)}
.badge.called,.badge.rejected{background:var(--warnbg);color:var(--warn)}
.badge.error,.badge.open{background:var(--badbg);color:var(--bad)}
.verdict{font-weight:600}.verdict.ok{color:var(--ok)}.verdict.bad{color:var(--bad)}
.error{color:var(--bad)}
.note,.more{color:var(--muted);font-size:12px;margin:4px 0}
table{border-collapse:collapse;width:100%;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:var(--bg);font-weight:600;white-space:nowrap}
.events td:nth-child(-n+4),.signals td:nth-child(-n+2),.pods td{white-space:nowrap}
.summary a{color:var(--blue);text-decoration:none}
.steps{list-style:none;margin:0;padding:0}
.step{display:grid;grid-template-columns:11em 6.5em 7.5em minmax(0,1fr);gap:8px;padding:3px 0;
border-bottom:1px solid var(--line);align-items:center}
.step.head{color:var(--muted);font-size:12px}
.step .name{font-weight:600}.step.closed .name{color:var(--ok)}
.step .took{position:relative;font-variant-numeric:tabular-nums}
.bar{display:block;height:4px;background:var(--blue);border-radius:2px;margin-top:2px}
.step .at{color:var(--muted);font-variant-numeric:tabular-nums}
.step .detail{color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.summary{font-size:14px}.diagnosis .summary{font-size:14px;margin:4px 0}
dl{display:grid;grid-template-columns:8em minmax(0,1fr);gap:2px 8px;margin:4px 0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
code,pre{font:12px/1.45 ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,Consolas,
monospace}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:8px 10px;
overflow:auto;max-height:420px;white-space:pre-wrap;overflow-wrap:anywhere}
.logs{list-style:none;margin:0;padding:6px 10px;background:#24292f;color:#e6edf3;
border-radius:6px;overflow:auto}
.log-line{font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.log-line .ts{color:#8b949e}.log-line .pod{color:#79c0ff}
.log-line code{color:#e6edf3}
.pr-body{border:1px solid var(--line);border-radius:6px;padding:4px 14px;overflow:auto}
.pr-files{position:sticky;top:8px;align-self:start}
.pr-body h2{font-size:16px;margin:14px 0 6px;border-bottom:1px solid var(--line)}
.pr-body blockquote{margin:6px 0;padding:0 10px;border-left:3px solid var(--line);
color:var(--muted)}
.diff{padding:0;white-space:pre}
.diff span{display:block;padding:0 10px}
.diff .add{background:var(--okbg)}.diff .del{background:var(--badbg)}
.diff .hunk{background:var(--bluebg);color:var(--muted)}
.file-head{font-size:12px;margin:6px 0 2px}
.file-head .add{color:var(--ok)}.file-head .del{color:var(--bad)}
.call{border:1px solid var(--line);border-radius:6px;padding:8px 12px;margin:8px 0}
.call-head{margin-bottom:4px}
.transcript{list-style:none;margin:0;padding:0}
.transcript li{display:grid;grid-template-columns:6em minmax(0,1fr);gap:8px;padding:3px 0}
.transcript .progress{color:var(--muted);font-size:12px;padding:0}
.transcript .who{color:var(--muted);font-size:12px;padding-top:2px}
.transcript audio{display:block;margin:4px 0 2px;height:32px;width:min(420px,100%)}
.transcript .gather q{font-weight:600}
.speech{background:var(--bg);border-radius:6px;padding:6px 10px}
.level{font-weight:600}
figure{margin:12px 0}.plot{max-width:100%;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:12px}
details summary{cursor:pointer;color:var(--blue);margin:8px 0}
"""
