"""How a long-running service starts and stops: settings, logging, signals, an embedded health server."""

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from events.log import configure_logging, get_logger
from events.settings import Settings

log = get_logger(__name__)

ServiceMain = Callable[[Settings, asyncio.Event], Awaitable[None]]
T = TypeVar("T")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings() -> Settings:
    """The settings from the environment; a wrong value ends the process with a message naming the
    setting and what was wrong (exit 2), never a traceback and never the value (it may be a secret)."""
    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors(include_url=False, include_input=False):
            setting = "_".join(str(part) for part in problem["loc"]).upper()
            print(f"invalid setting {setting}: {problem['msg']}", file=sys.stderr)
        sys.exit(2)


def refuse_open_network(settings: Settings) -> None:
    """A service that listens beyond this machine without API_KEY does not start (ALLOW_ANONYMOUS=true
    says that is meant)."""
    if not loopback(settings.bind_host) and settings.api_key is None and not settings.allow_anonymous:
        log.error("refusing to start: listening on a network address without API_KEY", bind_host=settings.bind_host,
                  fix="set API_KEY, or ALLOW_ANONYMOUS=true if anonymous access is meant")  # fmt: skip
        sys.exit(2)


def run_service(name: str, main: ServiceMain, settings: Settings | None = None) -> None:
    """Run `main(settings, stop)` until it returns; SIGTERM and SIGINT set `stop` (graceful shutdown)."""
    settings = settings or load_settings()
    configure_logging(name, settings.log_level)
    refuse_open_network(settings)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("service starting")
        await main(settings, stop)
        log.info("service stopped")

    try:
        asyncio.run(runner())
    except Exception:
        log.exception("service crashed")
        sys.exit(1)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling and exiting to its host service."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:  # uvicorn exits the process when it cannot listen (it logged why)
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}") from None
        self.listening.set()


@contextlib.asynccontextmanager
async def http_server(app: FastAPI, host: str, port: int) -> AsyncIterator[uvicorn.Server]:
    """Serve `app` (health and data endpoints) beside a service's main loop, once it listens. A port it
    cannot listen on raises OSError here, so the service stops and its supervisor starts it again (a
    SystemExit from uvicorn's task would leave the service half stopped)."""
    server = _EmbeddedServer(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait([task, listening], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if not server.listening.is_set():
        await task  # raises why it could not listen
        raise OSError(f"the server on {host}:{port} stopped before it listened")
    try:
        yield server
    finally:
        server.should_exit = True
        await task


STARTUP_TIMEOUT_S = 150.0  # longer than `events.retry.on_startup` waits for a server that is not up yet


def startup_deadline(seconds: float = STARTUP_TIMEOUT_S) -> asyncio.TimerHandle:
    """A service that has not become ready `seconds` after it started (a broker that accepted its
    connections and never answered: seen with Tansu restarting) exits with status 1, so that its
    supervisor starts it afresh. Cancel the returned handle once the service is ready."""

    def stuck() -> None:
        log.error("service did not become ready in time, exiting to be restarted", seconds=seconds)
        sys.stdout.flush()
        os._exit(1)

    return asyncio.get_running_loop().call_later(seconds, stuck)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


async def read_ahead(items: Iterator[T], depth: int) -> AsyncGenerator[T, None]:
    """Iterate a blocking iterator (a video decoder) in a thread of its own, at most `depth` items ahead
    of the consumer: the thread never waits for the event loop to ask for the next item, the event
    loop never waits for the thread unless it is ahead. The iterator is closed in its thread when the
    consumer stops early; an error it raises is raised to the consumer."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[object] = asyncio.Queue()
    slots, stop = threading.Semaphore(depth), threading.Event()

    def produce() -> None:
        try:
            for item in items:
                slots.acquire()
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(ready.put_nowait, item)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            loop.call_soon_threadsafe(ready.put_nowait, _Failed(error))
        finally:
            if isinstance(items, Generator):
                items.close()
            loop.call_soon_threadsafe(ready.put_nowait, _END)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := await ready.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            slots.release()
            yield cast(T, item)
    finally:
        stop.set()
        slots.release()  # a producer waiting for a slot wakes, sees the stop and ends
        await asyncio.to_thread(thread.join)
