"""The periodic work Celery beat sends: the polls of Loki and of Kubernetes events.

Kept apart from celeryconfig so the schedule reads as one table. Each entry names a
task and how often it runs, in Celery's `beat_schedule` format; polls go to the
`polls` queue by the routes in celeryconfig, never to a queue a slow task can block.
"""

from typing import Any

beat_schedule: dict[str, dict[str, Any]] = {}
