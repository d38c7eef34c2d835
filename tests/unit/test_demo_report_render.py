"""The demo report's page and the stages it shows, from records written by hand.

Every text the page shows comes from outside: log lines and events written by whatever
runs in the cluster, the model's diagnosis and speech, the pull request's body, what
the engineer said on the phone. Here each of them carries HTML meant to run — a
<script>, an <img onerror>, an <svg onload>, a closing tag that would end the block
it is quoted in, a javascript: link, an image to fetch — and the page, parsed the way
a browser tokenizes it, has none of it as an element or attribute: every one is text,
shown as written. The stages are derived from the whole record, whatever stage name
it holds last.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from html_tree import parse, select

from aifixer.models import (
    ApplyResult,
    CallRecord,
    Diagnosis,
    EventRecord,
    Evidence,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    LogLine,
    PodState,
    PullRequestRef,
    Rejection,
    Signal,
    Verification,
    Workload,
)
from aifixer_sandbox import report, timeline

HOSTILE = [
    "<script>document.title='pwned'</script>",
    '<img src=x onerror="document.body.dataset.pwned=1">',
    '"><svg onload=alert(1)>',
    "</code></li></ol><script>alert(2)</script>",
    "<iframe src=http://203.0.113.9/></iframe>",
    "&lt;b&gt;already escaped&lt;/b&gt; & <b>bold</b>",
]
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2  # a GitHub token's shape
T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
FORBIDDEN_TAGS = {
    "script",
    "svg",
    "iframe",
    "object",
    "embed",
    "form",
    "input",
    "link",
    "base",
    "frame",
    "math",
    "video",
}


def _incident(hostile: str) -> Incident:
    return Incident(
        fingerprint="f00d",
        workload=Workload(cluster="app", namespace="shop", name="review-api"),
        failure_class="CrashLoop",
        opened_at=T0,
        signals=[
            Signal(
                source="loki",
                namespace="shop",
                pod="review-api-1",
                reason="LogError",
                message=f"panic: {h}",
                observed_at=T0,
            )
            for h in HOSTILE
        ],
    )


def _state(*, called: bool = False) -> IncidentState:
    hostile = " ".join(HOSTILE)
    inc = _incident(hostile)
    evidence = Evidence(
        deployment={"kind": "Deployment"},
        pods=[
            PodState(
                name="review-api-1",
                phase="Running",
                ready=False,
                reasons=["CrashLoopBackOff", HOSTILE[0]],
                restart_count=3,
            )
        ],
        events=[
            EventRecord(type="Warning", reason="BackOff", message=h, object="Pod/x", count=1)
            for h in HOSTILE
        ],
        logs=[
            *(
                LogLine(time="2026-12-01T03:00:01Z", pod="review-api-1", container="app", line=h)
                for h in HOSTILE
            ),
            LogLine(
                time="2026-12-01T03:00:02Z",
                pod="review-api-1",
                container="app",
                line=f"using token {TOKEN}",
            ),
        ],
        pod_logs={"review-api-1/app": "\n".join(HOSTILE)},
        revisions=[],
        last_healthy_template=None,
        template_diff=[],
        healthy=False,
    )
    state = IncidentState(
        incident=inc,
        stage="closed",
        evidence=evidence,
        diagnosis=Diagnosis(
            summary=hostile,
            root_cause=hostile,
            failure_class="CrashLoop",
            fields=[HOSTILE[2]],
            source="model",
        ),
        rejections=[Rejection(source="model", strategy=HOSTILE[1], reasons=[hostile])],
        timings={"diagnose": 1.5, "patch": 0.2},
        model_used="stub",
        closed_at=T0 + timedelta(seconds=40),
    )
    if called:
        state.speech = f"The review API is failing. {HOSTILE[0]}"
        state.timings["call_oncall"] = 0.4
        state.calls = [
            CallRecord(
                time=T0 + timedelta(seconds=30),
                number="+33600000091",
                speech=state.speech,
                can_intervene=False,
                fingerprint="f00d",
                status="completed",
                call_sid="CA" + "0" * 32,
                attempt=1,
                answer_text=HOSTILE[1],
                incident_id=inc.id,
            ),
            CallRecord(
                time=T0 + timedelta(seconds=50),
                number="+33600000092",
                speech=state.speech,
                can_intervene=True,
                fingerprint="f00d",
                status="completed",
                call_sid="CA" + "1" * 32,
                attempt=2,
                answer_text="yes",
                incident_id=inc.id,
            ),
        ]
        state.outcome = "called"
        return state
    change = FieldChange(
        path="spec.template.spec.containers[0].image",
        before=HOSTILE[0],
        after="shop/review-api:1.7.3",
    )
    state.proposal = FixProposal(
        source="model", strategy="restore", rationale=hostile, manifest={}, changes=[change]
    )
    state.apply = ApplyResult(
        original={},
        applied={},
        changes=[change],
        generation=3,
        applied_at=T0 + timedelta(seconds=5),
    )
    state.timings["apply"] = 0.1
    state.timings["open_pr"] = 1.2
    state.verification = Verification(
        ok=True, reason=hostile, checked_at=T0 + timedelta(seconds=20)
    )
    state.pull_request = PullRequestRef(
        number=7, url="http://127.0.0.1:1/acme/gitops/pull/7", branch="aifixer/f00d", created=True
    )
    state.outcome = "fixed"
    return state


PR_BODY = "\n\n".join(
    [
        "## Diagnosis",
        *HOSTILE,
        "[click me](javascript:alert(3)) and [the runbook](http://127.0.0.1:1/runbook)",
        "![tracker](http://203.0.113.9/pixel.png)",
        "```\n" + "\n".join(HOSTILE) + "\n```",
        f"token: {TOKEN}",
    ]
)


def _entry(state: IncidentState) -> dict:
    calls = []
    for c in state.calls:
        calls.append(
            {
                "sid": c.call_sid,
                "to": c.number,
                "status": "completed",
                "duration": 12,
                "answer": HOSTILE[1],
                "events": [
                    {"type": "progress", "event": "answered", "status": "in-progress"},
                    {
                        "type": "say",
                        "text": state.speech,
                        "audio": f"audio/01-x/{c.call_sid}-01.wav",
                    },
                    {"type": "gather", "heard": {"SpeechResult": HOSTILE[1]}},
                    {
                        "type": "request",
                        "method": "POST",
                        "http_status": 200,
                        "url": "http://127.0.0.1:1/twilio/gather?token=s3cr3t-query",
                        "purpose": "x",
                    },
                ],
            }
        )
    return {
        "name": "injection <script>alert(4)</script>",
        "description": HOSTILE[1],
        "expect": "fixed",
        "report": {
            "model": "stub",
            "complete": True,
            "duration_s": 42.0,
            "levels": [],
            "scaling": {},
            "missing": [],
        },
        "states": [state],
        "plots": [],
        "problems": [],
        "pulls": [
            {
                "number": 7,
                "title": HOSTILE[0],
                "body": PR_BODY,
                "state": "open",
                "url": "http://127.0.0.1:1/acme/gitops/pull/7",
                "head": "aifixer/f00d",
                "base": "main",
                "files": [
                    {
                        "filename": HOSTILE[2],
                        "status": "modified",
                        "additions": 1,
                        "deletions": 1,
                        "patch": "@@ -1 +1 @@\n-" + HOSTILE[0] + "\n+" + HOSTILE[1],
                    }
                ],
            }
        ]
        if state.pull_request
        else [],
        "calls": calls,
        "call_file": [f'{{"incident_id": "{state.incident.id}", "speech": "{HOSTILE[3]}"}}'],
    }


@pytest.fixture(params=["fixed", "called"])
def page(request) -> str:
    state = _state(called=request.param == "called")
    return report.render([_entry(state)], T0)


def test_no_untrusted_text_becomes_markup(page):
    elements = parse(page)
    tags = {e.tag for e in elements}
    assert not tags & FORBIDDEN_TAGS, tags & FORBIDDEN_TAGS
    for e in elements:
        assert not [a for a in e.attrs if a.startswith("on")], (e.tag, e.attrs)
        if e.tag == "img":
            assert e.attrs["src"].startswith("data:image/png;base64,")
        href = e.attrs.get("href")
        if href is not None:
            assert href.startswith(("#", "http://", "https://")), href
        if e.tag == "audio":
            assert e.attrs["src"].startswith("audio/") and ".." not in e.attrs["src"]
    [title] = select(elements, "title")
    assert title.text == "aifixer demo report"
    assert len(select(elements, "style")) == 1


def test_each_hostile_string_is_shown_as_written(page):
    elements = parse(page)
    text = "".join(e.text for e in select(elements, "body"))
    for h in HOSTILE:
        assert h in text
    logs = [e.text for e in select(elements, "li", "log-line")]
    if logs:
        for h in HOSTILE:
            assert any(line.endswith(h) for line in logs), h


def test_the_pull_request_body_is_markdown_with_its_html_as_text():
    elements = parse(report.render([_entry(_state())], T0))
    body = [e for e in elements if e.within("pr-body")]
    assert [e.text for e in body if e.tag == "h2"] == ["Diagnosis"]
    paragraphs = "".join(e.text for e in body if e.tag == "p")
    for h in HOSTILE[:3]:
        assert h in paragraphs
    assert "[click me](javascript:alert(3))" in paragraphs  # no link made of it
    links = [e.attrs["href"] for e in body if e.tag == "a"]
    assert "http://127.0.0.1:1/runbook" in links
    assert all(link.startswith("http") for link in links), links
    assert not [e for e in body if e.tag == "img"]  # an image is not fetched, at most linked
    code = "".join(e.text for e in body if e.tag == "code")
    assert HOSTILE[3] in code
    diff = {
        cls: [e.text for e in select(elements, "span", cls, within="diff")]
        for cls in ("add", "del", "hunk")
    }
    assert diff == {"add": ["+" + HOSTILE[1]], "del": ["-" + HOSTILE[0]], "hunk": ["@@ -1 +1 @@"]}


def test_credentials_are_redacted_and_query_strings_dropped():
    for called in (False, True):
        page = report.render([_entry(_state(called=called))], T0)
        assert TOKEN not in page
        assert "s3cr3t-query" not in page


def test_the_page_allows_no_script_and_no_network():
    elements = parse(report.render([_entry(_state())], T0))
    [csp] = [e for e in elements if e.attrs.get("http-equiv") == "Content-Security-Policy"]
    policy = dict(
        (d.split()[0], d.split()[1:]) for d in csp.attrs["content"].split(";") if d.strip()
    )
    assert policy["default-src"] == ["'none'"]
    assert "script-src" not in policy
    assert policy["img-src"] == ["data:"]


def test_the_calls_have_their_transcript_audio_and_call_file_lines():
    state = _state(called=True)
    elements = parse(report.render([_entry(state)], T0))
    calls = select(elements, "div", "call")
    assert [c.attrs["data-call"] for c in calls] == ["CA" + "0" * 32, "CA" + "1" * 32]
    assert [e.attrs["src"] for e in select(elements, "audio")] == [
        f"audio/01-x/CA{d * 32}-01.wav" for d in "01"
    ]
    heard = [e.text for e in select(elements, "q", within="gather")]
    assert heard == [HOSTILE[1], HOSTILE[1]]
    [callfile] = select(elements, "pre", "callfile")
    assert HOSTILE[3] in callfile.text and state.incident.id in callfile.text


def test_stages_come_from_the_whole_record_not_its_last_stage_name():
    fixed = [s["stage"] for s in timeline.passed(_state())]
    assert fixed == [
        "opened",
        "diagnosed",
        "patched",
        "applied",
        "verified",
        "pull request #7 opened",
        "closed: fixed",
    ]
    took = {s["stage"]: s["seconds"] for s in timeline.passed(_state())}
    assert took["diagnosed"] == 1.5 and took["verified"] == 15.0 and took["closed: fixed"] == 40.0
    called = [s["stage"] for s in timeline.passed(_state(called=True))]
    # The second call ended after the incident closed (the escalation goes on).
    assert called == [
        "opened",
        "diagnosed",
        "no safe fix",
        "calling",
        "call 1: cannot intervene",
        "closed: called",
        "call 2: can intervene",
    ]


def test_an_unfinished_incident_shows_where_it_stands():
    state = _state()
    state.closed_at, state.outcome, state.pull_request = None, None, None
    state.stage = "taken over"
    stages = [s["stage"] for s in timeline.passed(state)]
    assert stages[-2:] == ["verified", "taken over"]


def test_a_comment_line_is_left_out_of_the_body_and_any_other_html_shown():
    html_out = report.markdown("<!-- aifixer-workload: app/shop/review-api -->\nFixed <!-- x -->\n")
    assert "aifixer-workload" not in html_out
    assert [e.text for e in parse(html_out) if e.tag == "p"] == ["Fixed <!-- x -->"]


def test_a_monitoring_scenario_shows_its_levels_decisions_and_plot(tmp_path):
    from PIL import Image

    plot = tmp_path / "scaling-shop-search.png"
    Image.new("RGB", (8, 4), (9, 105, 218)).save(plot)
    decisions = [
        {"at": 1_796_000_000 + i * 10, "mode": "apply", "history_samples": 100,
         "current_cores": 0.5, "peak_cores": 1.2, "replicas_before": before,
         "replicas_after": after, "reason": HOSTILE[0]}
        for i, (before, after) in enumerate([(2, 2), (2, 4), (4, 4), (4, 2)])
    ]  # fmt: skip
    entry = {
        "name": "forecast-scaling-search",
        "description": "hourly rhythm",
        "expect": "scaling",
        "report": {
            "model": "stub",
            "complete": True,
            "duration_s": 90.0,
            "levels": [
                {
                    "namespace": "shop",
                    "deployment": "checkout",
                    "pod": "checkout-1",
                    "values": ["low", "high", "low"],
                }
            ],
            "scaling": {"shop/search": decisions},
            "missing": [],
        },  # fmt: skip
        "states": [],
        "plots": [plot],
        "problems": [],
        "pulls": [],
        "calls": [],
        "call_file": [],
    }
    elements = parse(report.render([entry], T0))
    assert [e.text for e in select(elements, "span", "level")] == ["low", "high", "low"]
    [table] = select(elements, "table", "decisions")
    rows = [e for e in elements if e.tag == "tr" and table in e.ancestors][1:]
    assert [r.text.count("→") for r in rows] == [1, 1]  # the two that changed the replicas
    assert "2 → 4" in rows[0].text and "4 → 2" in rows[1].text
    assert HOSTILE[0] in rows[0].text
    [img] = select(elements, "img", "plot")
    assert img.attrs["src"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert "reached" in "".join(e.text for e in select(elements, "table", "summary"))


def test_a_draft_pull_request_is_named_so():
    state = _state()
    state.pull_request = state.pull_request.model_copy(update={"draft": True, "repo": "acme/apps"})
    assert "draft pull request #7 opened" in [s["stage"] for s in timeline.passed(state)]
    entry = _entry(state)
    entry["gitops_repo"] = "acme/gitops"
    pulls = entry["pulls"]
    entry["pulls"] = [{**pulls[0], "repo": "acme/gitops", "title": "another repository's #7"},
                      {**pulls[0], "repo": "acme/apps", "draft": True}]  # fmt: skip
    elements = parse(report.render([entry], T0))
    [pr] = select(elements, "section", "pr")
    heading = next(e.text for e in elements if e.tag == "h4" and pr in e.ancestors)
    assert heading.startswith("Draft pull request #7: ") and "another" not in heading
    assert "draft PR #7" in "".join(e.text for e in select(elements, "table", "summary"))
