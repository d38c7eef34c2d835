"""aifixer: keeps Kubernetes applications healthy while their people sleep.

`celery -A aifixer worker` finds the Celery app as `aifixer.app`; it is imported on
first access only, so using the package (the CLI, the sandbox, tests) does not
configure Celery.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "app":
        from .app import app

        return app
    raise AttributeError(name)
