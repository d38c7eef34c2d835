"""In a burst, incidents already under way go first: a new incident's diagnose waits
behind the later steps of others on the model queue (kombu's Redis priority lists),
through the real Redis broker and the farm's own routes."""

from __future__ import annotations

from celery import Celery

import celeryconfig


def test_a_patch_sent_after_a_diagnose_is_served_first(redis_url, clean_redis):
    app = Celery("aifixer-priority-test")
    app.config_from_object(celeryconfig)
    app.conf.broker_url = redis_url
    for n in range(3):
        app.send_task("aifixer.tasks.diagnose", args=[f"new-{n}"])
    app.send_task("aifixer.tasks.explain", args=["beside-verify"])
    app.send_task("aifixer.tasks.patch", args=["under-way"])
    app.send_task("aifixer.tasks.apply", args=["elsewhere"])  # another queue: untouched
    served = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get("model", no_ack=True)) is not None:
            served.append((message.headers["task"], message.headers["argsrepr"]))
    assert served == [
        ("aifixer.tasks.patch", "['under-way']"),
        ("aifixer.tasks.explain", "['beside-verify']"),  # after the steps, before new ones
        *[("aifixer.tasks.diagnose", f"['new-{n}']") for n in range(3)],  # in order
    ]
    assert clean_redis.llen("cluster") == 1


def test_only_a_new_incidents_first_step_and_the_explanation_wait():
    routes = celeryconfig.task_routes
    assert routes["aifixer.tasks.diagnose"]["priority"] == celeryconfig.NEW_INCIDENT_PRIORITY > 0
    # The model's explanation, written beside verify: behind the steps of incidents
    # under way, ahead of new incidents.
    explain = routes["aifixer.tasks.explain"]["priority"]
    assert 0 < explain == celeryconfig.EXPLAIN_PRIORITY < celeryconfig.NEW_INCIDENT_PRIORITY
    assert all(
        "priority" not in r
        for name, r in routes.items()
        if name not in ("aifixer.tasks.diagnose", "aifixer.tasks.explain")
    )
