"""Scale-down never loses work: an inference worker (a real `vdetect inference` process) stopped with
SIGTERM mid-stream, as Kubernetes stops a pod, finishes its batch, publishes its results and commits
them before it exits, within the manifest's terminationGracePeriodSeconds; the next worker answers
the rest, each frame once."""

import asyncio
import signal
import time
from pathlib import Path

import httpx
import yaml

from events import topics
from events.clients import group_offsets, kafka_producer, records
from events.contracts import InferenceResult
from tests.conftest import RelayProcess, read_topic
from tests.harness import free_port
from tests.integration.test_inference import task
from tests.servers import photo

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 120


def grace_period() -> int:
    deployment = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "base" / "inference.yaml").read_text())
    (inference,) = [doc for doc in deployment if doc["kind"] == "Deployment"]
    return inference["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


async def answered(settings) -> list[InferenceResult]:
    """The results published so far (read from the start with a fresh group)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic(topics.INFERENCE_RESULTS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[InferenceResult] = []
    try:
        while batches := await consumer.getmany(timeout_ms=1000):  # until a fetch brings nothing more
            found += [InferenceResult.from_bytes(m.value) for m in records(batches)]
        return found
    finally:
        await consumer.stop()


async def committed(settings) -> int:
    async with group_offsets(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as offsets:
        done, _ = await offsets.positions()
    return sum(done.values())


def worker(settings, log: Path, port: int) -> RelayProcess:
    return RelayProcess("inference", settings, log, INFERENCE_PORT=str(port), INFERENCE_THREADS="1",
                        INFERENCE_BATCH_SIZE="4")  # fmt: skip


async def frames_answered(port: int) -> int:
    """The worker's own count (its /data), 0 until it answers."""
    try:
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            return (await client.get(f"http://127.0.0.1:{port}/data")).json()["frames_processed"]
    except httpx.TransportError:
        return 0


async def test_a_worker_stopped_with_sigterm_commits_what_it_answered_and_the_next_answers_the_rest(
    settings, kafka_topics, tmp_path
):
    frame = photo("bus.jpg")
    async with kafka_producer(settings) as producer:
        for number in range(FRAMES):
            job = f"job-{number % 3}"
            await producer.send(settings.topic(topics.INFERENCE_TASKS), task(job, number, frame), key=job.encode())
        await producer.flush()

    port = free_port()
    first = worker(settings, tmp_path / "first.log", port)
    try:
        async with asyncio.timeout(120):  # the model loads, the worker joins its group and starts answering
            while await frames_answered(port) < 16:
                await asyncio.sleep(0.1)
        first.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        returncode = await first.died()
        took = time.monotonic() - stopping
    finally:
        first.stop()
    assert returncode == 0, first.log.read_text()[-2000:]
    assert took < grace_period(), f"stopped in {took:.1f} s"
    print(f"stopped in {took:.2f} s of {grace_period()} s")
    before = await answered(settings)
    # each message it took was answered and committed, none answered and left uncommitted
    assert await committed(settings) == len(before) < FRAMES

    second = worker(settings, tmp_path / "second.log", free_port())
    try:
        results = [InferenceResult.from_bytes(m.value) for m in
                   await read_topic(settings, topics.INFERENCE_RESULTS, FRAMES, timeout=180)]  # fmt: skip
    finally:
        second.stop()
    frames = sorted(result.frame for result in results)
    assert frames == list(range(FRAMES))  # every frame answered, none twice
    assert all(result.error is None and result.objects for result in results)
