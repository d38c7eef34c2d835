"""The Celery application of the aifixer farm.

Settings live in the top-level `celeryconfig` module, so an operator reads and
overrides them in one place; tasks are found in `aifixer.tasks` when the app is
finalized. The package exposes this app lazily, so `celery -A aifixer worker`
works without importing Celery for every other use of the package.

Every log record emitted while a task runs carries that task's id, whatever logger
wrote it, so one incident's lines can be followed across workers; and every record is
redacted (`aifixer.redact`) before a handler writes it.
"""

import logging

from celery import Celery, signals
from celery._state import get_current_task
from celery.app import trace

from aifixer.redact import RedactingFilter

# A task's return value is an incident's whole state (the workload's manifest, its
# evidence and logs). Celery logs it with every success by default; the farm's logs
# carry the task name, id and duration, and the state stays in Redis.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

app = Celery("aifixer")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["aifixer"])

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s [%(task_id)s] %(name)s: %(message)s"


class TaskIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        record.task_id = task.request.id if task is not None and task.request.id else "-"
        return True


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _task_ids_in_logs(logger: logging.Logger, *args, **kwargs) -> None:
    for handler in logger.handlers:
        handler.addFilter(TaskIdFilter())
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))


# -- incident memory's model, loaded as a memory worker starts ----------------------------

_queues: set[str] | None = None  # the queues this worker consumes (None: all of them)


@signals.celeryd_after_setup.connect
def _note_queues(sender, instance, **kwargs) -> None:
    global _queues
    consume_from = instance.app.amqp.queues.consume_from
    _queues = set(consume_from) if consume_from else None


@signals.worker_process_init.connect
def _warm_memory(**kwargs) -> None:
    """Load the embedding model in the background as a pool process starts.

    Loading it (importing PyTorch) takes seconds; left to the first `recall`, they
    are spent on an incident's way to its fix. Only in workers serving the `memory`
    queue, with incident memory on; a failure here is logged, and the first recall
    reports it as it would have.
    """
    if _queues is not None and "memory" not in _queues:
        return
    from aifixer.settings import get_settings

    settings = get_settings()
    if not settings.memory_enabled:
        return

    def load() -> None:
        from aifixer.adapters import embed

        try:
            embed.preload(settings)
        except Exception:  # noqa: BLE001 - the first recall meets (and reports) it again
            logging.getLogger(__name__).exception("embedding model not preloaded")

    import threading

    threading.Thread(target=load, name="embedder-preload", daemon=True).start()
