"""Inference worker loop: a batch of frames from `inference_tasks` -> detector -> `inference_results`.

At least once: offsets are committed only after every result of the batch is acknowledged by Kafka.
A message that cannot be decoded goes to the dead-letter topic and the loop moves on.
"""

import asyncio
import base64
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from events import topics
from events.clients import commit, ensure_topics, kafka_consumer, kafka_producer, records
from events.contracts import InferenceResult, InferenceTask
from events.deadletter import dead_letter
from events.log import get_logger
from events.runtime import http_server
from events.settings import Settings
from inference.detector import Detector, OnnxDetector

log = get_logger(__name__)
SERVICE = "inference"


@dataclass
class Stats:
    frames: int = 0
    batches: int = 0
    dead_letters: int = 0
    busy_seconds: float = 0.0
    consuming: bool = False  # partitions assigned: frames can reach this worker
    started: float = field(default_factory=time.monotonic)


Decoded = tuple[InferenceTask, np.ndarray] | ValueError


def decode_all(messages: list[ConsumerRecord]) -> list[Decoded]:
    """Decode a batch (in a worker thread: JSON, base64 and JPEG decoding stay off the event loop)."""
    decoded: list[Decoded] = []
    for message in messages:
        try:
            decoded.append(decode_task(message))
        except ValueError as error:  # pydantic's ValidationError and binascii.Error are ValueErrors
            decoded.append(error)
    return decoded


def decode_task(message: ConsumerRecord) -> tuple[InferenceTask, np.ndarray]:
    """Parse a task and decode its JPEG; raises ValueError for anything malformed."""
    task = InferenceTask.from_bytes(message.value)
    buffer = np.frombuffer(base64.b64decode(task.image, validate=True), dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("frame is not a decodable image")
    return task, image


async def handle_batch(
    messages: list[ConsumerRecord],
    detector: Detector,
    producer: AIOKafkaProducer,
    settings: Settings,
    stats: Stats,
) -> None:
    tasks, images = [], []
    for message, outcome in zip(messages, await asyncio.to_thread(decode_all, messages), strict=True):
        if isinstance(outcome, ValueError):
            await dead_letter(producer, settings, SERVICE, message, outcome)
            stats.dead_letters += 1
            continue
        tasks.append(outcome[0])
        images.append(outcome[1])
    if not tasks:
        return
    started = time.monotonic()
    detections = await asyncio.to_thread(detector.detect, images)
    stats.busy_seconds += time.monotonic() - started
    deliveries = []
    for task, objects in zip(tasks, detections, strict=True):
        result = InferenceResult(event_id=task.event_id, frame=task.frame, objects=objects)
        deliveries.append(
            await producer.send(settings.topic(topics.INFERENCE_RESULTS), result.to_bytes(), key=task.event_id.encode())
        )
        log.debug("frame detected", event_id=task.event_id, frame=task.frame, objects=len(objects))
    await asyncio.gather(*deliveries)
    stats.frames += len(tasks)
    stats.batches += 1


async def next_batch(consumer: AIOKafkaConsumer, settings: Settings) -> list[ConsumerRecord]:
    """Up to INFERENCE_BATCH_SIZE frames: what is there now, topped up for at most INFERENCE_BATCH_WAIT_MS."""
    size = settings.inference_batch_size
    messages = records(await consumer.getmany(timeout_ms=500, max_records=size))
    if messages and len(messages) < size and settings.inference_batch_wait_ms > 0:
        more = await consumer.getmany(timeout_ms=settings.inference_batch_wait_ms, max_records=size - len(messages))
        messages += records(more)
    return messages


async def consume(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    detector: Detector,
    settings: Settings,
    stats: Stats,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        messages = await next_batch(consumer, settings)
        stats.consuming = bool(consumer.assignment())
        if not messages:
            continue
        with structlog.contextvars.bound_contextvars(batch=len(messages)):
            await handle_batch(messages, detector, producer, settings, stats)
        await commit(consumer)


def health_app(detector: Detector, settings: Settings, stats: Stats) -> FastAPI:
    app = FastAPI(title="vdetect inference")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "service": SERVICE, "ready": stats.consuming}

    @app.get("/data")
    @app.get("/api/data")
    async def data() -> dict:
        return {
            "service": SERVICE,
            "model": settings.model_path.name,
            "classes": len(detector.names),
            "conf_threshold": settings.conf_threshold,
            "iou_threshold": settings.iou_threshold,
            "batch_size": settings.inference_batch_size,
            "frames_processed": stats.frames,
            "batches": stats.batches,
            "dead_letters": stats.dead_letters,
            "busy_seconds": round(stats.busy_seconds, 3),
            "uptime_seconds": round(time.monotonic() - stats.started, 3),
        }

    return app


def build_detector(settings: Settings) -> Detector:
    return OnnxDetector(
        settings.model_path, settings.conf_threshold, settings.iou_threshold, settings.inference_threads
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    detector = build_detector(settings)
    stats = Stats()
    await ensure_topics(settings)
    async with (
        http_server(health_app(detector, settings, stats), settings.bind_host, settings.inference_port),
        kafka_producer(settings) as producer,
        kafka_consumer(
            settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP, settings.inference_batch_size
        ) as consumer,
    ):
        log.info("inference ready", model=str(settings.model_path), classes=len(detector.names))
        await consume(consumer, producer, detector, settings, stats, stop)
