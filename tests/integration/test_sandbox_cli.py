"""`aifixer sandbox calls` and `aifixer sandbox prs`: a person's view of what happened.

The world is driven through the real clients (twilio places a call, GitPython pushes
a branch, PyGithub opens a PR), then the commands read it back over HTTP from the
endpoints file, as they would for a sandbox started by `aifixer sandbox up`.
"""

from __future__ import annotations

import time
from pathlib import Path

import git
import pytest
from click.testing import CliRunner
from github import Auth, Github
from twilio.rest import Client

from aifixer.cli import main
from aifixer_sandbox.scenario import bundled_dir

SCENARIO = bundled_dir() / "oom-report-api.yaml"
pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_calls_and_prs_views(make_world, tmp_path):
    world = make_world(SCENARIO, speed=40)
    ep = world.endpoints
    state_dir = Path(ep.state_dir)

    twilio = Client(ep.twilio_account_sid, ep.twilio_auth_token)
    twilio.api.base_url = ep.twilio_base
    number = ep.oncall_numbers[1]  # this person says "yes"
    call = twilio.calls.create(
        to=number,
        from_=ep.twilio_from,
        twiml="<Response><Say>The report API is out of memory.</Say>"
        '<Gather input="speech dtmf" actionOnEmptyResult="true" timeout="3">'
        "<Say>Can you intervene?</Say></Gather></Response>",
    )
    deadline = time.monotonic() + 60
    while twilio.calls(call.sid).fetch().status not in ("completed", "failed", "busy", "no-answer"):
        assert time.monotonic() < deadline, "the call never ended"
        time.sleep(0.2)

    repo = git.Repo.clone_from(
        ep.gitops_clone_url.replace("http://", f"http://x:{ep.github_token}@"), tmp_path / "clone"
    )
    repo.git.checkout("-b", "raise-memory")
    manifest = tmp_path / "clone" / "apps/shop/report-api.yaml"
    manifest.write_text(
        manifest.read_text().replace("limits: {memory: 64Mi}", "limits: {memory: 192Mi}")
    )
    repo.git.commit("-am", "Raise the report API's memory limit")
    repo.git.push("origin", "raise-memory")
    gh = Github(base_url=ep.github_api, auth=Auth.Token(ep.github_token))
    gh.get_repo(ep.gitops_repo).create_pull(
        title="Raise report-api memory limit", body="OOMKilled", head="raise-memory", base="main"
    )

    runner = CliRunner()
    calls = runner.invoke(
        main, ["sandbox", "calls", "--state-dir", str(state_dir)], terminal_width=400
    )
    assert calls.exit_code == 0, calls.output
    assert number in calls.output and "out of memory" in calls.output
    assert ".wav" in calls.output

    prs = runner.invoke(main, ["sandbox", "prs", "--state-dir", str(state_dir)], terminal_width=400)
    assert prs.exit_code == 0, prs.output
    assert "#1 Raise report-api memory limit" in prs.output
    lines = prs.output.splitlines()
    assert any(ln.startswith("-") and "limits: {memory: 64Mi}" in ln for ln in lines), prs.output
    assert any(ln.startswith("+") and "limits: {memory: 192Mi}" in ln for ln in lines), prs.output


def test_views_say_clearly_when_no_sandbox_runs(tmp_path):
    result = CliRunner().invoke(main, ["sandbox", "calls", "--state-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "no sandbox is running" in result.output
