"""Inference worker loop: a batch of frames from `inference_tasks` -> detector -> `inference_results`.

At least once: offsets are committed only after every result of the batch is acknowledged by Kafka.
A message that cannot be decoded, or a frame the detector cannot handle, goes to the dead-letter
topic with the error; a frame that was decoded also gets a result with the error and no objects, so
its job still completes. The loop moves on either way. A frame whose bytes are in the frame store
(`events.framestore`) is read from there; one no longer there is answered by nobody (`FrameGone`).
"""

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata
from fastapi import FastAPI

from events import metrics, topics
from events.clients import Consumer, ensure_topics, kafka_consumer, kafka_producer, object_store
from events.consume import Item, Loop, topped_up
from events.contracts import DetectedObject, InferenceResult, InferenceTask
from events.deadletter import dead_letter
from events.framestore import FrameGone, FrameStore, frame_store
from events.health import health_app
from events.log import get_logger
from events.modelfile import sha256_of
from events.runtime import http_server, startup_deadline
from events.settings import Settings
from inference import engines
from inference.detector import Detector
from inference.models import Models, loader
from inference.preprocess import preprocess

log = get_logger(__name__)
SERVICE = "inference"
Decoded = tuple[InferenceTask, np.ndarray]


@dataclass
class Stats:
    frames: int = 0
    batches: int = 0
    dead_letters: int = 0
    frame_errors: int = 0
    frames_gone: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)


def decode_all(messages: list[ConsumerRecord], store: FrameStore | None = None) -> list[Decoded | Exception]:
    """Decode a batch (in a worker thread: parsing and any JPEG decoding stay off the event loop)."""
    decoded: list[Decoded | Exception] = []
    for message in messages:
        try:
            decoded.append(decode_task(message, store))
        except Exception as error:  # noqa: BLE001 - whatever is wrong with one message concerns it alone
            decoded.append(error)
    return decoded


def decode_task(message: ConsumerRecord, store: FrameStore | None = None) -> Decoded:
    """Parse a task, take out its image as BGR and preprocess it; raises ValueError for anything malformed,
    FrameGone for a stored frame no longer in the store."""
    task = InferenceTask.from_bytes(message.value)
    if task.stored:
        if store is None:
            raise ValueError("the frame is in a frame store, and this worker has none (FRAME_STORE_DIR is unset)")
        task.image = store.read(task)
    return task, model_input(task)


def model_input(task: InferenceTask) -> np.ndarray:
    """What the detector is given for a frame message: its pixels as BGR, with the design's preprocessing."""
    return preprocess(frame_pixels(task))


def frame_pixels(task: InferenceTask) -> np.ndarray:
    """The frame's BGR pixels; ValueError if its bytes are not what its header says."""
    width, height = task.image_width, task.image_height
    if task.encoding == "i420":
        if width % 2 or height % 2 or len(task.image) != width * height * 3 // 2:
            raise ValueError(f"the frame has {len(task.image)} bytes, not the {width * height * 3 // 2} of "
                             f"{width}x{height} i420 samples (even sides)")  # fmt: skip
        i420 = np.frombuffer(task.image, np.uint8).reshape(height * 3 // 2, width)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    image = cv2.imdecode(np.frombuffer(task.image, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("frame is not a decodable image")
    return image


def in_original_pixels(objects: list[DetectedObject], task: InferenceTask, image: np.ndarray) -> list[DetectedObject]:
    """Boxes found on the scaled-down frame, mapped back to the original frame's pixels."""
    height, width = image.shape[:2]
    if task.width is None or task.height is None or (task.width, task.height) == (width, height):
        return objects
    sx, sy = task.width / width, task.height / height
    return [
        obj.model_copy(update={"box": [round(min(v * s, limit), 1) for v, s, limit in
                                       zip(obj.box, (sx, sy, sx, sy), (task.width, task.height) * 2, strict=True)]})
        for obj in objects
    ]  # fmt: skip


@dataclass
class Worker:
    models: Models
    producer: AIOKafkaProducer
    settings: Settings
    stats: Stats = field(default_factory=Stats)
    frames: FrameStore | None = None  # FRAME_STORE_DIR's, where stored frames are read
    sending: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)  # results not acknowledged yet

    def __post_init__(self) -> None:
        metrics.start_at_zero(metrics.FRAMES, {"stage": "inferred"})

    async def parse(self, messages: list[ConsumerRecord]) -> list[Decoded | Exception]:
        return await asyncio.to_thread(decode_all, messages, self.frames)

    async def detect(self, items: list[Item[Decoded]]) -> None:
        """One detector call per model in the batch (one, usually), then one result per frame."""
        by_model: dict[str | None, list[Item[Decoded]]] = defaultdict(list)
        for item in items:
            by_model[item[1][0].model].append(item)
        for model, group in by_model.items():
            await self.detect_with(await self.models.get(model), group)

    async def detect_with(self, detector: Detector, items: list[Item[Decoded]]) -> None:
        tasks = [task for _, (task, _) in items]
        images = [image for _, (_, image) in items]
        started = time.monotonic()
        detections = await asyncio.to_thread(detector.detect, images)
        self.stats.busy_seconds += time.monotonic() - started
        metrics.INFERENCE_SECONDS.observe(time.monotonic() - started)
        await self.publish(
            [
                InferenceResult(
                    event_id=task.event_id, frame=task.frame, objects=in_original_pixels(objects, task, image)
                )
                for task, image, objects in zip(tasks, images, detections, strict=True)
            ]
        )
        self.stats.frames += len(tasks)
        self.stats.batches += 1
        metrics.FRAMES.labels(stage="inferred").inc(len(tasks))

    async def publish(self, results: list[InferenceResult]) -> None:
        """Send the results; `settle` waits for Kafka's acknowledgements (the next batch is detected meanwhile)."""
        topic = self.settings.topic(topics.INFERENCE_RESULTS)
        for result in results:
            self.sending.append(await self.producer.send(topic, result.to_bytes(), key=result.event_id.encode()))

    def settle(self) -> asyncio.Future[list[RecordMetadata]]:
        """Done when every result sent so far is acknowledged (the consume loop commits the batch then)."""
        sending, self.sending = self.sending, []
        return asyncio.gather(*sending)

    async def reject(self, message: ConsumerRecord, decoded: Decoded | None, error: Exception) -> None:
        """Dead-letter the message; a frame that was decoded still gets a result, with the error. A frame gone
        from the store was answered already, or belongs to a job that is over, or is sent again by its
        runner's stall check: it is let go."""
        if isinstance(error, FrameGone):
            self.stats.frames_gone += 1
            log.info("frame no longer in the frame store, let go", reason=str(error))
            return
        await dead_letter(self.producer, self.settings, SERVICE, message, error)
        self.stats.dead_letters += 1
        if decoded is not None:
            task = decoded[0]
            reason = f"{type(error).__name__}: {error}"[:500]
            await self.publish([InferenceResult(event_id=task.event_id, frame=task.frame, objects=[], error=reason)])
            self.stats.frame_errors += 1
            log.error("frame failed in the detector", event_id=task.event_id, frame=task.frame, error=reason)


async def next_batch(consumer: Consumer, size: int, wait_ms: int) -> list[ConsumerRecord]:
    """Up to `size` frames (INFERENCE_BATCH_SIZE), topped up for at most `wait_ms` (INFERENCE_BATCH_WAIT_MS)."""
    messages = await topped_up(consumer, size, wait_ms)
    if messages:
        structlog.contextvars.bind_contextvars(batch=len(messages))
    return messages


def inference_app(models: Models, settings: Settings, stats: Stats, loop: Loop) -> FastAPI:
    """/health (ready: joined the workers' group) and /metrics, plus /data: the model and the counters."""
    app = health_app(SERVICE, lambda: {"ready": loop.joined})

    @app.get("/data")
    @app.get("/api/data")
    async def data() -> dict:
        return {
            "service": SERVICE,
            "model": settings.model_path.name,
            "classes": len(models.default.names),
            "models_loaded": len(models.loaded),
            "engine": models.default.engine,
            "precision": models.default.precision,
            "conf_threshold": settings.conf_threshold,
            "iou_threshold": settings.iou_threshold,
            "batch_size": settings.inference_batch_size,
            "frames_processed": stats.frames,
            "batches": stats.batches,
            "dead_letters": stats.dead_letters,
            "frame_errors": stats.frame_errors,
            "frames_gone": stats.frames_gone,
            "busy_seconds": round(stats.busy_seconds, 3),
            "uptime_seconds": round(time.monotonic() - stats.started, 3),
        }

    return app


def build_detector(settings: Settings, path: Path | None = None, pinning: bool | None = False) -> Detector:
    """The detector the settings choose; its threads are not pinned to cores (`inference.openvino_engine`)."""
    engine = engines.this_machine(settings.inference_engine, settings.inference_precision, settings.inference_device)
    return engines.build(engine, path or settings.model_path, settings.conf_threshold, settings.iou_threshold,
                         settings.inference_threads, settings.max_detections, pinning)  # fmt: skip


async def main(settings: Settings, stop: asyncio.Event) -> None:
    deadline = startup_deadline()
    detector = build_detector(settings)
    store = object_store(settings)
    models = Models(detector, await asyncio.to_thread(sha256_of, settings.model_path),
                    loader(store, settings.default_bucket, lambda path: build_detector(settings, path)),
                    settings.inference_max_models)  # fmt: skip
    await ensure_topics(settings)
    async with (
        kafka_producer(settings) as producer,
        kafka_consumer(
            settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP, settings.inference_batch_size
        ) as consumer,
    ):
        worker = Worker(models, producer, settings,
                        frames=frame_store(settings.frame_store_dir, settings.frame_store_max_mb))  # fmt: skip
        size, wait_ms = settings.inference_batch_size, settings.inference_batch_wait_ms
        loop: Loop[Decoded] = Loop(consumer, worker.parse, worker.detect, worker.reject, size,
                                   fetch=lambda: next_batch(consumer, size, wait_ms), settle=worker.settle,
                                   read_ahead=True)  # fmt: skip
        async with http_server(inference_app(models, settings, worker.stats, loop), settings.bind_host,
                               settings.inference_port):  # fmt: skip
            log.info("inference ready", model=str(settings.model_path), classes=len(detector.names),
                     engine=detector.engine, precision=detector.precision)  # fmt: skip
            deadline.cancel()
            await loop.run(stop)
