"""The Twilio Voice stand-in driven by Twilio's Node.js library (npm `twilio`, run by
`node` from tests/node): a call is created, played, fetched and listed as by a Node.js
program pointed at the stand-in through the API domain's `baseUrl`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from aifixer_sandbox.clock import Clock
from aifixer_sandbox.phone import Phone, make_app
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node/npm are not installed: the Twilio Node.js library test needs them",
    ),
]

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
ACCOUNT = "AC" + "2" * 32
TOKEN = "e" * 32
CALLER = "+15005550006"
ON_CALL = "+33612345679"
GREETING = "Deployment web is failing in namespace shop."


def test_a_call_through_the_node_library(tmp_path):
    assert (NODE_DIR / "node_modules" / "twilio").is_dir(), (
        "tests/node/node_modules is missing: `./dev test` installs it (npm ci in tests/node)"
    )
    heard: list[str] = []

    async def voice(request: web.Request) -> web.Response:
        heard.append(request.query.get("CallSid", ""))
        return web.Response(
            text=f"<?xml version='1.0'?><Response><Say>{GREETING}</Say></Response>",
            content_type="text/xml",
        )

    hooks = web.Application()
    hooks.router.add_get("/voice", voice)
    loop = LoopThread().start()
    phone = Phone(tmp_path / "calls", {ACCOUNT: TOKEN}, Clock(speed=200))
    api = loop.call(start_site, Site("phone", make_app(phone)))
    hook = loop.call(start_site, Site("webhook", hooks))
    try:
        loop.call_soon(phone.set_person, ON_CALL, "yes")
        # The library rewrites host names when TWILIO_EDGE/TWILIO_REGION are set.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
        proc = subprocess.run(
            [
                shutil.which("node") or "node",
                str(NODE_DIR / "create-call.mjs"),
                api.url,
                ACCOUNT,
                TOKEN,
                ON_CALL,
                CALLER,
                f"{hook.url}/voice",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        sid = out["created"]["sid"]
        record = loop.call(phone.finished, sid, timeout=20)
    finally:
        loop.call(stop_site, api)
        loop.call(stop_site, hook)
        loop.stop()

    assert sid.startswith("CA") and len(sid) == 34
    assert out["created"] == {"sid": sid, "status": "queued", "to": ON_CALL, "from": CALLER}
    assert out["fetched"]["status"] == "completed" and int(out["fetched"]["duration"]) > 0
    assert out["listed"] == [sid]
    assert out["missing"]["status"] == 404 and out["missing"]["code"] == 20404
    assert heard == [sid]
    assert [e["text"] for e in record["events"] if e["type"] == "say"] == [GREETING]
