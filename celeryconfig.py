"""Celery settings for the aifixer farm, read by `app.config_from_object("celeryconfig")`.

Plain lowercase module-level names, as Celery expects. Celery imports this module
lazily, the first time the app's configuration is read (when a worker, beat or
Flower starts), so reading the broker URL from the environment here happens at
start-up, not at import of the aifixer package.
"""

from kombu import Queue

from aifixer.settings import Settings
from beat_schedule import beat_schedule  # noqa: F401 - a setting Celery reads from here

broker_url = Settings().redis_dsn  # AIFIXER_REDIS_URL (+ _PASSWORD), read when Celery loads
result_backend = broker_url
broker_connection_retry_on_startup = True

# JSON only: messages carry incident ids (the record lives in Redis, see
# aifixer/store.py), never pickles a worker would have to trust.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 24 * 3600

timezone = "UTC"
enable_utc = True

# A task is acknowledged only when it has finished, so a worker that dies mid-task
# leaves it to another worker; every side effect is idempotent for that reason.
# Prefetching one message at a time keeps a slow model call from holding other
# incidents hostage in its worker's buffer.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# The model runs on CPU in the reference deployment: a call can take minutes. Past
# the soft limit a task gets SoftTimeLimitExceeded and can clean up; past the hard
# limit its process is killed.
task_soft_time_limit = 300
task_time_limit = 360

# With the Redis broker, a message not acknowledged within the visibility timeout
# is delivered again. It must exceed the longest task run (task_time_limit) and the
# longest countdown or ETA any task uses, or work runs twice; verify therefore
# re-polls with short countdowns instead of one long one.
# A message a worker held when Redis restarted also waits for it: the watchdog
# (AIFIXER_WATCHDOG_STALL_S) resumes such an incident long before.
broker_transport_options = {"visibility_timeout": 3600}

# One queue per kind of work, so each scales and stalls on its own:
# - polls: the frequent, cheap polls of Loki and events; they must never wait
#   behind a slow task, or detection lags;
# - model: the slow model calls (patch's choice; explain, beside verify), bounded by
#   the model server's capacity rather than by the farm's; and each incident's first
#   step (diagnose: the evidence), queued behind the incidents under way;
# - cluster: apply and verify against the application cluster, short and frequent;
# - notify: pull requests and phone calls, rare side effects that must not be
#   starved by a burst of incidents.
# - memory: incident memory (recall before patch, remember after finalize), the
#   only work that loads the embedding model; run it on its own workers.
# - scaling: forecast scaling's periodic pass (Prometheus history, a forecast per
#   opted-in Deployment); a slow forecast never delays detection.
# A worker serves the queues named with `-Q`.
task_queues = (
    Queue("polls"), Queue("model"), Queue("cluster"), Queue("notify"), Queue("memory"),
    Queue("scaling"),
)  # fmt: skip
NEW_INCIDENT_PRIORITY = 6  # a step of kombu's Redis priority_steps (0, 3, 6, 9)
EXPLAIN_PRIORITY = 3
task_routes = {
    "aifixer.tasks.poll_*": {"queue": "polls"},
    "aifixer.tasks.ingest_signals": {"queue": "polls"},
    "aifixer.tasks.call_next": {"queue": "notify"},
    # A new incident's first step waits behind the later steps of incidents already
    # under way (kombu's Redis priority lists: 0 is served first, the default): in a
    # burst, incidents finish one after another instead of all together at the end.
    "aifixer.tasks.diagnose": {"queue": "model", "priority": NEW_INCIDENT_PRIORITY},
    "aifixer.tasks.patch": {"queue": "model"},
    # The model's explanation and the call's speech, written while verify waits: after
    # the steps of incidents under way, before new incidents' first step.
    "aifixer.tasks.explain": {"queue": "model", "priority": EXPLAIN_PRIORITY},
    "aifixer.tasks.apply": {"queue": "cluster"},
    "aifixer.tasks.verify": {"queue": "cluster"},
    "aifixer.tasks.label_cpu_level": {"queue": "cluster"},
    "aifixer.tasks.forecast_scaling": {"queue": "scaling"},
    "aifixer.tasks.open_pr": {"queue": "notify"},
    "aifixer.tasks.call_oncall": {"queue": "notify"},
    "aifixer.tasks.finalize": {"queue": "notify"},
    "aifixer.tasks.conclude": {"queue": "notify"},
    "aifixer.tasks.check_pull_requests": {"queue": "notify"},
    "aifixer.tasks.watchdog": {"queue": "polls"},
    # Incident memory embeds text with a PyTorch model: only workers started with
    # `-Q memory` load it, so the others stay small.
    "aifixer.tasks.recall": {"queue": "memory"},
    "aifixer.tasks.remember": {"queue": "memory"},
}
# An unrouted task lands on a queue every worker serves, never on Celery's default
# "celery" queue, which no worker here listens to.
task_default_queue = "cluster"

# Flower and `celery events` see tasks only when workers send events.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
