"""Run aiohttp applications on loopback, in the foreground or in a background thread.

Every stand-in is an `aiohttp.web.Application`. The sandbox runs all of them on one
event loop (so the simulated cluster's state is only ever touched from one thread and
needs no locks); tests run that loop in a background thread and talk to it over real
sockets, exactly as the product does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

LOOPBACK = "127.0.0.1"


@dataclass
class Site:
    """One application bound to a loopback port."""

    name: str
    app: web.Application
    port: int = 0  # 0: pick a free port
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


async def start_site(site: Site) -> Site:
    """Bind `site.app` to 127.0.0.1 and record the port actually bound."""
    runner = web.AppRunner(site.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    tcp = web.TCPSite(runner, LOOPBACK, site.port, reuse_address=True)
    await tcp.start()
    sock = tcp._server.sockets[0]  # type: ignore[union-attr]
    site.port = sock.getsockname()[1]
    site.runner = runner
    return site


async def stop_site(site: Site) -> None:
    if site.runner is not None:
        await site.runner.cleanup()
        site.runner = None


@dataclass
class LoopThread:
    """An asyncio loop in a daemon thread, for tests and for embedding in a CLI.

    `call(coro_fn, *args)` runs a coroutine function on the loop and waits for its
    result; `call_soon(fn, *args)` runs a plain function on the loop thread and waits.
    """

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def start(self) -> LoopThread:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="sandbox-loop", daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def call(self, coro_fn: Callable[..., Awaitable], *args, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(timeout)

    def call_soon(self, fn: Callable, *args, timeout: float = 30):
        async def wrapper():
            return fn(*args)

        return self.call(wrapper, timeout=timeout)

    def stop(self) -> None:
        if self.thread is None:
            return

        async def drain():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(drain, timeout=10)
        except Exception:  # noqa: BLE001 - shutting down anyway; say why it was not clean
            logging.getLogger(__name__).warning("tasks did not finish cleanly", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.thread = None


def serve_in_thread(app: web.Application, name: str = "app") -> tuple[str, Callable[[], None]]:
    """Serve one app on a free loopback port in a background loop.

    Returns (base_url, stop). Meant for tests of a single stand-in.
    """
    lt = LoopThread().start()
    site = lt.call(start_site, Site(name, app))

    def stop() -> None:
        lt.call(stop_site, site)
        lt.stop()

    return site.url, stop


class BackgroundLoop:
    """A coroutine `_run` kept running on the event loop between `start_loop` and `stop`."""

    _task: asyncio.Task | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start_loop(self, name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
