"""No secret leaves the farm: the secret corpus planted in a scenario, then looked for
everywhere the farm writes for the outside.

Every shape of `tests/secret_corpus.py` is planted three ways — as env literals of the
Deployment (under names that do not say "secret"), as log lines the containers print,
and as messages of events posted to the cluster — in a scenario aifixer fixes and one
it cannot. After the real farm has played each, none may be found in: the prompts the
model received, the pull request's title and body and the commit messages, the call
speech and the call file, the farm's own logs, and the Celery events (what Flower
shows: task arguments, results, errors).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import requests
import yaml
from celery import Celery
from kube_events import post_warnings
from secret_corpus import SECRETS

from aifixer import redact
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration]

SCENARIOS = {"oom-report-api": "fixed", "crash-every-release-pricing-engine": "called"}
VALUES = [text for _, text, _ in SECRETS]
FORBIDDEN = [secret for _, _, secret in SECRETS]


LOKI_WORDS = re.compile(r"(?i)error|fatal|panic|exception|traceback|not found|killed")


def planted(sc: scenario_mod.Scenario) -> scenario_mod.Scenario:
    """`sc` with every secret shape in its env literals and in its containers' logs.

    Lines printed at start carry none of the words the farm's Loki query selects: a
    fixed workload keeps printing them, and they must not read as new errors. Lines
    printed before a crash do: they are what the diagnosis reads.
    """
    flat = [v.replace("\n", " ") for v in VALUES]
    started = [f"config loaded: {LOKI_WORDS.sub('-', v)}" for v in flat]
    crashing = [f"error: upstream call failed: {v}" for v in flat]
    images = {}
    for name, image in sc.images.items():
        update = {"logs": [*image.logs, *started]}
        if image.crash is not None:
            update["crash"] = image.crash.model_copy(
                update={"logs": [*image.crash.logs, *crashing]}
            )
        images[name] = image.model_copy(update=update)

    def with_env(files):
        out = []
        for mf in files:
            docs = [d for d in yaml.safe_load_all(mf.yaml) if d]
            for doc in docs:
                if doc.get("kind") == "Deployment":
                    for c in doc["spec"]["template"]["spec"]["containers"]:
                        c["env"] = [*(c.get("env") or []), *(
                            {"name": f"CFG_{i:02d}", "value": v} for i, v in enumerate(VALUES)
                        )]  # fmt: skip
            out.append(mf.model_copy(update={"yaml": yaml.safe_dump_all(docs, sort_keys=False)}))
        return out

    return sc.model_copy(
        update={
            "images": images,
            "manifests": with_env(sc.manifests),
            "change": with_env(sc.change),
        }
    )


class Events:
    """Every Celery event the farm sends, as Flower would receive them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.seen: list[dict] = []
        self.receiver = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Events:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def leaks(text: str) -> list[str]:
    return [s for s in FORBIDDEN if s in text]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_planted_secret_leaves_the_farm(name, tmp_path):
    sc = planted(scenario_mod.load(scenario_mod.bundled_dir() / f"{name}.yaml"))
    deployment = next(
        d
        for f in (sc.change or sc.manifests)
        for d in yaml.safe_load_all(f.yaml)
        if d and d["kind"] == "Deployment"
    )
    meta = deployment["metadata"]
    with (
        FarmRun(sc, tmp_path / "run", speed=30) as farm,
        Events(farm.env["AIFIXER_REDIS_URL"]) as events,
    ):
        post_warnings(  # the secrets in the messages of Warning events on the Deployment
            farm.env["AIFIXER_KUBECONFIG"],
            meta["namespace"],
            meta["name"],
            ((f"ConfigCheckFailed{i}", f"config check failed: {v}") for i, v in enumerate(VALUES)),
            component="config-checker",
        )
        states = farm.wait(timeout=240)
        assert farm.finished(states), farm.report(states)
        assert [s.outcome for s in states] == [SCENARIOS[name]], farm.report(states)
        model_url = farm.env["AIFIXER_MODEL_BASE_URL"].removesuffix("/v1")
        prompts = requests.get(f"{model_url}/stub/requests", timeout=10).text
        prs = farm.world.call(farm.world.forge.prs)
        commits = "".join(
            subprocess.run(
                ["git", "--git-dir", str(repo.git.path), "log", "--all", "--format=%B"],
                capture_output=True, text=True, check=True,
            ).stdout
            for repo in farm.world.forge.repos.values()
        )  # fmt: skip
        calls = farm.world.phone.calls()
        call_file = Path(farm.env["AIFIXER_CALL_FILE"])
        sinks = {
            "model prompts": prompts,
            "pull request": "".join(f"{p['title']}\n{p['body']}" for p in prs),
            "commit messages": commits,
            "call speech": "".join(str(c) for c in calls),
            "call file": call_file.read_text() if call_file.exists() else "",
            "farm logs": "".join(p.log_path.read_text(errors="replace") for p in farm.procs),
            "celery events": "".join(str(e) for e in events.seen),
        }
    found = {sink: leaks(text) for sink, text in sinks.items()}
    assert all(not v for v in found.values()), found
    # The secrets did reach the farm (the evidence it gathered holds them), and what it
    # sent out showed them as [redacted]: the test saw real traffic.
    evidence = "".join(s.evidence.model_dump_json() for s in states if s.evidence)
    assert leaks(evidence), "the farm never read the planted secrets"
    assert events.seen, "no Celery event was received"
    if SCENARIOS[name] == "fixed":
        # The diagnosis prompt (the `explain` stage, after apply) carries the logs.
        assert redact.REDACTED in sinks["model prompts"]
        assert prs and redact.REDACTED in sinks["pull request"]
    else:
        # Nothing could be tried: the speech prompt carries facts only, never log text.
        assert json.loads(prompts), "the model was never asked for the speech"
        assert calls and sinks["call file"]
