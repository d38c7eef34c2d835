"""`aifixer demo`'s report, opened in headless Chromium as a person opens it.

`aifixer demo` plays two bundled scenarios with the stand-in model:
injection-review-api (a release whose logs carry prompt injections and HTML — a
<script>, an <img onerror> — is fixed by a pull request) and unfixable-ghost-image
(nothing can fix it: the first engineer called cannot intervene, the second can). Its
live progress names every stage each incident passed, with timings. Then Chromium
opens the report from disk (file://, the sandbox long gone): each incident with its
timeline, the evidence with the hostile lines shown as text (no script ran: the title
and body are untouched, and no such element exists), the pull request's body
rendered from Markdown and its diff, every spoken sentence as an <audio> element on
a WAV file beside the report, and the call file's lines; no credential of the run is
in it. The screenshot is kept in aifixer-demo/test-report/report.png (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from html_tree import parse, select
from PIL import Image

from aifixer_sandbox import browser
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.scenario, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = bundled_dir()
PLAYED = [SCENARIOS / "injection" / "injection-review-api.yaml",
          SCENARIOS / "unfixable-ghost-image.yaml"]  # fmt: skip
OUT = ROOT / "aifixer-demo" / "test-report"
SCRIPT_LINE = "panic: widget <script>document.title='pwned'</script> failed to render"
IMG_LINE = (
    "error: <img src=x onerror=\"document.body.dataset.pwned='yes'\"> in template reviews.html"
)


@pytest.fixture(scope="module")
def played() -> tuple[str, Path]:
    """(what `aifixer demo` printed, its report)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIFIXER_")}
    done = subprocess.run(
        [sys.executable, "-m", "aifixer.cli", "demo", "--model", "stub", "--out", str(OUT),
         *map(str, PLAYED)],
        capture_output=True, text=True, timeout=840, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = OUT / "report.html"
    assert f"report: {report}" in " ".join(done.stdout.split())
    return done.stdout, report


def _progress(stdout: str, workload: str) -> list[str]:
    return [line.split("→", 1)[1].strip() for line in stdout.splitlines()
            if line.strip().startswith(workload) and "→" in line]  # fmt: skip


@pytest.mark.timeout(900)
def test_the_live_progress_names_every_stage(played):
    stdout, _ = played
    fixed = _progress(stdout, "shop/review-api")
    stages = [re.sub(r"(,| in | \(| \[).*", "", line) for line in fixed]
    assert [s for s in stages if s != "recalled"] == [
        "opened", "diagnosed", "patched", "applied", "verified", "pull request #1 opened",
        "closed: fixed",
    ], fixed  # fmt: skip
    assert re.fullmatch(r"diagnosed in (<0\.1|\d+\.\d) s", fixed[1]), fixed
    assert re.fullmatch(r"verified in \d+\.\d s \(\+\d+\.\d s\)", fixed[stages.index("verified")])
    assert re.fullmatch(r"closed: fixed, \d+\.\d s after opening", fixed[-1])
    called = [re.sub(r"(,| in | \(| \[).*", "", line)
              for line in _progress(stdout, "finance/ledger-exporter")]  # fmt: skip
    assert [s for s in called if s != "recalled"] == [
        "opened", "diagnosed", "no safe fix", "calling", "call 1: cannot intervene",
        "closed: called", "call 2: can intervene",
    ] or [s for s in called if s != "recalled"] == [
        "opened", "diagnosed", "no safe fix", "calling", "closed: called",
        "call 1: cannot intervene", "call 2: can intervene",
    ], called  # fmt: skip


@pytest.mark.timeout(900)
def test_the_report_opened_in_chromium_shows_each_incident_safely(played, needs_chromium, keep):
    _, report = played
    url = report.resolve().as_uri()
    dom = browser.dump_dom(url, wait_ms=2000)
    elements = parse(dom)

    # Nothing untrusted became markup, and no script ran (the page has none to run).
    assert not select(elements, "script")
    assert not [e for e in elements if any(a.startswith("on") for a in e.attrs)]
    assert [e.text for e in select(elements, "title")] == ["aifixer demo report"]
    [body] = select(elements, "body")
    assert "data-pwned" not in body.attrs
    for e in elements:
        for attr in ("src", "href"):
            value = e.attrs.get(attr)
            if value is not None and not e.within("pr-body"):
                assert not re.match(r"[a-z]+://", value), (e.tag, value)  # nothing to fetch

    incidents = select(elements, "article", "incident")
    assert [e.text.split()[0] for e in incidents] == ["shop/review-api", "finance/ledger-exporter"]
    fixed, called = incidents

    # The fix: its evidence, with the hostile lines as text, its PR body and diff.
    logs = [e.text for e in select(elements, "li", "log-line") if e.within("incident")]
    assert any(line.endswith(SCRIPT_LINE) for line in logs), logs
    assert any(line.endswith(IMG_LINE) for line in logs), logs
    [pr] = [e for e in select(elements, "section", "pr") if fixed in e.ancestors]
    headings = [e.text for e in elements if e.tag == "h2" and pr in e.ancestors]
    assert "Diagnosis" in headings and "Evidence" in headings and "Change" in headings
    body_text = "".join(e.text for e in select(elements, "div", "pr-body") if pr in e.ancestors)
    assert "applied this fix to the cluster and verified it" in body_text
    added = [e.text for e in select(elements, "span", "add", within="diff")]
    removed = [e.text for e in select(elements, "span", "del", within="diff")]
    assert any("image: shop/review-api:1.7.3" in line for line in added), added
    assert any("image: shop/review-api:1.7.4" in line for line in removed), removed
    assert "verified" in fixed.text and "closed: fixed" in fixed.text

    # The call: two calls, each sentence spoken with its audio beside the report.
    calls = [e for e in select(elements, "div", "call") if called in e.ancestors]
    assert len(calls) == 2
    assert "cannot intervene" in calls[0].text and "can intervene" in calls[1].text
    audio = [e for e in select(elements, "audio") if called in e.ancestors]
    assert len(audio) >= 4
    for a in audio:
        wav = (report.parent / a.attrs["src"]).resolve()
        assert wav.is_relative_to(report.parent.resolve())
        head = wav.read_bytes()[:12]
        assert head[:4] == b"RIFF" and head[8:] == b"WAVE", wav
    [callfile] = [e for e in select(elements, "pre", "callfile") if called in e.ancestors]
    lines = [json.loads(line) for line in callfile.text.splitlines()]
    assert [(c["attempt"], c["can_intervene"]) for c in lines] == [(1, False), (2, True)]

    # No credential of the run: the forge token, the Twilio account, Redis's URL.
    page = report.read_text()
    for pattern in (r"ghs_[0-9a-f]{8}", r"\bAC[0-9a-f]{32}\b", r"redis://", r"AIFIXER_"):
        assert not re.search(pattern, page), pattern

    shot = browser.screenshot(url, OUT / "report.png", width=1400, height=2400, wait_ms=2000)
    keep(shot, "the demo report as Chromium renders it")
    with Image.open(shot) as img:
        header = img.convert("RGB").getpixel((5, 5))
        assert header == (0x24, 0x29, 0x2F), header  # the page's own styles applied
    check = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(report)])
    assert check.returncode == 0, ".gitignore must keep aifixer-demo/ out of git"
