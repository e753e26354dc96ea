"""The inference worker against real Tansu with the real model."""

import asyncio
import base64

import cv2

from events import topics
from events.clients import kafka_consumer, kafka_producer
from events.contracts import DeadLetter, InferenceResult, InferenceTask
from inference.service import Stats, build_detector, consume
from tests.conftest import read_topic
from tests.servers import ultralytics_asset


def task(event_id: str, frame: int, photo: str) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(ultralytics_asset(photo))))
    assert ok
    image = base64.b64encode(jpeg.tobytes()).decode()
    return InferenceTask(event_id=event_id, frame=frame, image=image).to_bytes()


async def test_worker_detects_frames_and_dead_letters_poison_messages(settings, kafka_topics):
    detector = build_detector(settings)
    stats = Stats()
    async with kafka_producer(settings) as producer:
        sends = [
            (task("job-1", 0, "bus.jpg"), b"job-1"),
            (task("job-1", 5, "zidane.jpg"), b"job-1"),
            (b"{not json", b"job-2"),
            (InferenceTask(event_id="job-3", frame=0, image="bm90IGEganBlZw==").to_bytes(), b"job-3"),
        ]
        for value, key in sends:
            await producer.send_and_wait(settings.topic(topics.INFERENCE_TASKS), value, key=key)
        stop = asyncio.Event()
        async with kafka_consumer(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as consumer:
            worker = asyncio.create_task(consume(consumer, producer, detector, settings, stats, stop))
            async with asyncio.timeout(60):
                while stats.frames + stats.dead_letters < 4:
                    await asyncio.sleep(0.1)
            stop.set()
            await worker
            committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    assert sum(v or 0 for v in committed.values()) == 4  # every message finished and committed
    results = {r.frame: r for r in (InferenceResult.from_bytes(m.value) for m in
                                    await read_topic(settings, topics.INFERENCE_RESULTS, 2))}  # fmt: skip
    assert {o.class_name for o in results[0].objects} >= {"bus", "person"}
    assert [o.class_name for o in results[5].objects].count("person") == 2
    letters = [DeadLetter.from_bytes(m.value) for m in await read_topic(settings, topics.DEAD_LETTERS, 2)]
    assert sorted(letter.key for letter in letters) == ["job-2", "job-3"]
    assert all(letter.service == "inference" and letter.topic.endswith("inference_tasks") for letter in letters)
    assert any("decodable" in letter.error for letter in letters)
