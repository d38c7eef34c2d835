"""The periodic polls that feed the farm, read by celeryconfig as `beat_schedule`.

Both polls run every `AIFIXER_POLL_INTERVAL_S` seconds (default 15), the watchdog
every `AIFIXER_WATCHDOG_INTERVAL_S` (default 30). Each expires
after one interval: a poll that could not start in time is dropped rather than run
late behind the next one, since the next one covers the same ground from the cursor.
"""

from aifixer.settings import get_settings

_interval = get_settings().poll_interval_s
_watchdog = get_settings().watchdog_interval_s

beat_schedule = {
    "poll-loki": {
        "task": "aifixer.tasks.poll_loki",
        "schedule": _interval,
        "options": {"queue": "polls", "expires": _interval},
    },
    "poll-events": {
        "task": "aifixer.tasks.poll_events",
        "schedule": _interval,
        "options": {"queue": "polls", "expires": _interval},
    },
    # Incidents that stopped moving (a lost message, a worker gone) are finished.
    "watchdog": {
        "task": "aifixer.tasks.watchdog",
        "schedule": _watchdog,
        "options": {"queue": "polls", "expires": _watchdog},
    },
}
