"""The periodic polls that feed the farm, read by celeryconfig as `beat_schedule`.

Both polls run every `AIFIXER_POLL_INTERVAL_S` seconds (default 15) for each cluster the
farm watches (AIFIXER_CLUSTERS_FILE, else the one of AIFIXER_KUBECONFIG...), the watchdog
every `AIFIXER_WATCHDOG_INTERVAL_S` (default 30), the pull request check every
`AIFIXER_PR_CHECK_INTERVAL_S` (default 600). Each expires
after one interval: a poll that could not start in time is dropped rather than run
late behind the next one, since the next one covers the same ground from the cursor.
"""

from aifixer import clusters
from aifixer.settings import get_settings

_interval = get_settings().poll_interval_s
_watchdog = get_settings().watchdog_interval_s
_scaling = get_settings().scaling_interval_s
_pulls = get_settings().pr_check_interval_s
# One beat, polls per cluster: each cluster's Loki and events are polled by tasks of
# their own, naming it (a clusters file that cannot be used stops beat here, saying why).
_names, _from_file = clusters.names(get_settings())


def _polls() -> dict[str, dict]:
    entries = {}
    for name in _names:
        suffix = f":{name}" if _from_file else ""
        for source in ("loki", "events"):
            entries[f"poll-{source}{suffix}"] = {
                "task": f"aifixer.tasks.poll_{source}",
                "schedule": _interval,
                "args": (name,),
                "options": {"queue": "polls", "expires": _interval},
            }
    return entries


beat_schedule = {
    **_polls(),
    # Forecast scaling: only Deployments annotated aifixer.io/forecast-scaling, and
    # only when a Prometheus is configured.
    **(
        {
            "forecast-scaling": {
                "task": "aifixer.tasks.forecast_scaling",
                "schedule": _scaling,
                "options": {"queue": "scaling", "expires": _scaling},
            }
        }
        if get_settings().prometheus_url
        else {}
    ),
    # Incidents that stopped moving (a lost message, a worker gone) are finished.
    "watchdog": {
        "task": "aifixer.tasks.watchdog",
        "schedule": _watchdog,
        "options": {"queue": "polls", "expires": _watchdog},
    },
    # What became of recent incidents' pull requests: merged (when) or closed unmerged.
    "check-pull-requests": {
        "task": "aifixer.tasks.check_pull_requests",
        "schedule": _pulls,
        "options": {"queue": "notify", "expires": _pulls},
    },
}
