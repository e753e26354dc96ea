"""Session-wide real servers (SecantusDB, Tansu) and per-test isolation (own databases, own topics)."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymongo import AsyncMongoClient

from api.app import create_app
from events.clients import ensure_topics, mongo_client, records
from events.indexes import MAIN_DB, RUNNER_DB, ensure_indexes
from events.settings import Settings
from tests.servers import Server, running, secantus, tansu


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(secantus(tmp_path_factory.mktemp("secantus"))) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tansu(tmp_path_factory.mktemp("tansu"))) as server:
        yield server


def mongo_uri(server: Server) -> str:
    return f"mongodb://127.0.0.1:{server.port}/?directConnection=true"


@pytest.fixture
def settings(tmp_path: Path, mongo_server: Server, kafka_server: Server) -> Settings:
    """Settings for one test: its own databases, topic prefix, consumer groups and storage folder."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        mongo_uri=mongo_uri(mongo_server),
        main_db=f"main_{run}",
        runner_db=f"runner_{run}",
        kafka_bootstrap_servers=f"127.0.0.1:{kafka_server.port}",
        kafka_topic_prefix=f"t{run}.",
        kafka_partitions=2,
        kafka_session_timeout_ms=4000,  # a consumer joins a group on Tansu in about half of it
        storage_backend="dir",
        storage_dir=tmp_path / "storage",
        relay_checkpoint_interval_s=0.5,
        preprocess_workers=1,
    )


def api_client(settings: Settings, **options) -> TestClient:
    """The API on `settings`, in process. Its job-events consumer gets a shorter session: a test is
    usually shorter than the consumer's group join, aiokafka lets a join end before it stops, and a
    join takes about half the session on Tansu (2 s with the default of these tests, 0.75 s here)."""
    return TestClient(create_app(settings.model_copy(update={"kafka_session_timeout_ms": 1500})), **options)


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[AsyncMongoClient]:
    async with mongo_client(**settings.mongo()) as client:
        await ensure_indexes(client[settings.main_db], MAIN_DB)
        await ensure_indexes(client[settings.runner_db], RUNNER_DB)
        yield client


@pytest.fixture
async def kafka_topics(settings: Settings) -> Settings:
    await ensure_topics(settings)
    return settings


async def read_topic(settings: Settings, topic: str, count: int, timeout: float = 30, group: str | None = None) -> list:
    """Read `count` messages of a topic from the beginning with a fresh consumer group, or as the
    pipeline's consumer group `group` does (and commit what was read, as it would)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_topic_prefix}{group}" if group else f"reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=4000,
        heartbeat_interval_ms=800,
    )
    await consumer.start()
    messages: list = []
    try:
        async with asyncio.timeout(timeout):
            while len(messages) < count:
                batches = await consumer.getmany(timeout_ms=500)
                messages += records(batches)
        # anything beyond `count` that is already there counts too: duplicates must be visible
        batches = await consumer.getmany(timeout_ms=1000)
        messages += records(batches)
        if group:
            await consumer.commit()
    finally:
        await consumer.stop()
    return messages


async def eventually(check, timeout: float = 30, interval: float = 0.2):
    """Poll an async `check` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result


async def sweep_done(*relays) -> None:
    """Wait until each relay has finished its start-up sweep: it follows its change stream from then on."""
    await eventually(lambda: asyncio.sleep(0, all(relay.stats.sweeps for relay in relays)))


async def counted(collection, query: dict, expected: int) -> bool:
    return await collection.count_documents(query) == expected


@contextlib.asynccontextmanager
async def serving(service):
    """Run a service object's `run(stop)` loop as a task for the length of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a service process these settings."""
    return {
        "MONGO_URI": settings.mongo()["host"],
        "RUNNER_MONGO_URI": settings.mongo(runner=True)["host"],
        "MAIN_DB": settings.main_db,
        "RUNNER_DB": settings.runner_db,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "STORAGE_BACKEND": settings.storage_backend,
        "STORAGE_DIR": str(settings.storage_dir),
        "RELAY_CHECKPOINT_INTERVAL_S": str(settings.relay_checkpoint_interval_s),
    }


class RelayProcess:
    def __init__(self, kind: str, settings: Settings, log: Path, crash_at: str = "", **extra: str) -> None:
        env = {**os.environ, **settings_env(settings), "VDETECT_CRASH_AT": crash_at, **extra}
        self.kind, self.log = kind, log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vdetect", kind], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    async def died(self) -> int:
        async with asyncio.timeout(60):
            while self.process.poll() is None:
                await asyncio.sleep(0.1)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


@contextmanager
def relay(kind: str, settings: Settings, log: Path, crash_at: str = "", **env: str) -> Iterator[RelayProcess]:
    """A relay (`vdetect <kind>`) as a real process; VDETECT_CRASH_AT makes it SIGKILL itself there."""
    process = RelayProcess(kind, settings, log, crash_at, **env)
    try:
        yield process
    finally:
        process.stop()
