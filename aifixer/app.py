"""The Celery application of the aifixer farm.

Settings live in the top-level `celeryconfig` module, so an operator reads and
overrides them in one place; tasks are found in `aifixer.tasks` when the app is
finalized. The package exposes this app lazily, so `celery -A aifixer worker`
works without importing Celery for every other use of the package.
"""

from celery import Celery

app = Celery("aifixer")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["aifixer"])
