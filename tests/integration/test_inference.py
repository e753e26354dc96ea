"""The inference worker against real Tansu with the real model."""

import asyncio
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from events import topics
from events.clients import kafka_consumer, kafka_producer
from events.consume import Loop
from events.contracts import DeadLetter, InferenceResult, InferenceTask
from events.framestore import FrameStore
from inference.models import Models
from inference.preprocess import preprocess
from inference.service import Worker, build_detector, decode_task, next_batch
from tests.conftest import read_topic
from tests.servers import photo


def task(event_id: str, frame: int, image: np.ndarray, size: tuple[int, int] | None = None, raw: bool = False) -> bytes:
    """A frame message as the runner sends it: raw pixels (`raw`) or a JPEG."""
    width, height = size or (None, None)
    encoding, data = "i420", cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes()
    if not raw:
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        encoding, data = "jpeg", jpeg.tobytes()
    return InferenceTask(event_id=event_id, frame=frame, encoding=encoding, image=data, image_width=image.shape[1],
                         image_height=image.shape[0], width=width, height=height).to_bytes()  # fmt: skip


class RaisesOnTinyFrames:
    """The real detector, except that a frame under 16 pixels makes it raise (as a model can)."""

    def __init__(self, detector) -> None:
        self.detector, self.names, self.calls = detector, detector.names, 0
        self.engine, self.precision = detector.engine, detector.precision

    def detect(self, images):
        self.calls += 1
        if any(image.shape[0] < 16 for image in images):
            raise RuntimeError("the model cannot take this frame")
        return self.detector.detect(images)


async def run_worker(settings, worker: Worker, expected: int) -> tuple[dict, bool]:
    async with kafka_consumer(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as consumer:
        loop = Loop(
            consumer,
            worker.parse,
            worker.detect,
            worker.reject,
            8,
            fetch=lambda: next_batch(consumer, 8, settings.inference_batch_wait_ms),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        async with asyncio.timeout(60):
            while worker.stats.frames + worker.stats.dead_letters + worker.stats.frames_gone < expected:
                await asyncio.sleep(0.1)
        alive = not running.done()
        stop.set()
        await running
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    return committed, alive


async def test_worker_detects_frames_and_dead_letters_poison_messages(settings, kafka_topics):
    async with kafka_producer(settings) as producer:
        sends = [
            (task("job-1", 0, photo("bus.jpg")), b"job-1"),
            (task("job-1", 5, photo("zidane.jpg"), raw=True), b"job-1"),
            (b"{not json", b"job-2"),
            (
                InferenceTask(
                    event_id="job-3", frame=0, encoding="jpeg", image=b"not a jpeg", image_width=9, image_height=9
                ).to_bytes(),
                b"job-3",
            ),  # fmt: skip
            (
                InferenceTask(event_id="job-4", frame=0, image=b"short", image_width=9, image_height=9).to_bytes(),
                b"job-4",
            ),  # fmt: skip
        ]
        for value, key in sends:
            await producer.send_and_wait(settings.topic(topics.INFERENCE_TASKS), value, key=key)
        worker = Worker(Models.only(build_detector(settings)), producer, settings)
        committed, _ = await run_worker(settings, worker, 5)
    assert sum(v or 0 for v in committed.values()) == 5  # every message finished and committed
    results = {r.frame: r for r in (InferenceResult.from_bytes(m.value) for m in
                                    await read_topic(settings, topics.INFERENCE_RESULTS, 2))}  # fmt: skip
    assert {o.class_name for o in results[0].objects} >= {"bus", "person"}
    assert [o.class_name for o in results[5].objects].count("person") == 2
    letters = [DeadLetter.from_bytes(m.value) for m in await read_topic(settings, topics.DEAD_LETTERS, 3)]
    assert sorted(letter.key for letter in letters) == ["job-2", "job-3", "job-4"]
    assert all(letter.service == "inference" and letter.topic.endswith("inference_tasks") for letter in letters)
    assert any("decodable" in letter.error for letter in letters)
    assert any("not a frame message" in letter.error for letter in letters)
    assert any("5 bytes, not the 121 of 9x9 i420 samples (even sides)" in letter.error for letter in letters)


async def test_a_frame_the_detector_cannot_handle_gets_an_error_result_and_the_worker_goes_on(settings, kafka_topics):
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    async with kafka_producer(settings) as producer:
        sends = [
            task("job-a", 0, bus),
            task("job-a", 5, np.zeros((4, 3000, 3), np.uint8)),  # the detector raises on this one
            task("job-a", 10, zidane),
            task("job-b", 0, zidane),
            task("job-b", 5, bus),
        ]
        for value in sends:  # one partition: the bad frame sits in a batch with good ones
            await producer.send_and_wait(settings.topic(topics.INFERENCE_TASKS), value, key=b"k", partition=0)
        worker = Worker(Models.only(RaisesOnTinyFrames(build_detector(settings))), producer, settings)
        committed, alive = await run_worker(settings, worker, 5)
    assert alive and sum(v or 0 for v in committed.values()) == 5
    results = [InferenceResult.from_bytes(m.value) for m in await read_topic(settings, topics.INFERENCE_RESULTS, 5)]
    by_frame = {(r.event_id, r.frame): r for r in results}
    assert len(by_frame) == 5
    bad = by_frame["job-a", 5]
    assert bad.objects == [] and "cannot take this frame" in bad.error
    assert all(r.error is None and r.objects for key, r in by_frame.items() if key != ("job-a", 5))
    (letter,) = [DeadLetter.from_bytes(m.value) for m in await read_topic(settings, topics.DEAD_LETTERS, 1)]
    assert "RuntimeError" in letter.error and worker.stats.frame_errors == 1


async def test_boxes_found_on_a_scaled_down_frame_are_mapped_to_the_original_pixels(settings, kafka_topics):
    """The runner sends frames at the model's size; boxes come back in the original frame's pixels:
    those found on the frame as sent, scaled, and near those found on the full-resolution photo."""
    bus = photo("bus.jpg")  # 810x1080
    height, width = bus.shape[:2]
    small = cv2.resize(bus, (480, 640), interpolation=cv2.INTER_AREA)
    as_sent = cv2.cvtColor(cv2.cvtColor(small, cv2.COLOR_BGR2YUV_I420), cv2.COLOR_YUV2BGR_I420)
    detector = build_detector(settings)
    (full,) = detector.detect([preprocess(bus)])  # the worker preprocesses what it receives
    (on_small,) = detector.detect([preprocess(as_sent)])
    async with kafka_producer(settings) as producer:
        await producer.send_and_wait(settings.topic(topics.INFERENCE_TASKS),
                                     task("job", 0, small, (width, height), raw=True))  # fmt: skip
        await run_worker(settings, Worker(Models.only(detector), producer, settings), 1)
    (message,) = await read_topic(settings, topics.INFERENCE_RESULTS, 1)
    mapped = InferenceResult.from_bytes(message.value).objects
    scale = (width / 480, height / 640) * 2
    assert [o.class_name for o in mapped] == [o.class_name for o in on_small]
    for got, found in zip(mapped, on_small, strict=True):
        assert max(abs(a - b * s) for a, b, s in zip(got.box, found.box, scale, strict=True)) < 0.2
    assert {o.class_name for o in mapped} == {o.class_name for o in full} == {"bus", "person"}
    for obj in mapped:
        nearest = min((m for m in full if m.class_name == obj.class_name),
                      key=lambda m: sum(abs(a - b) for a, b in zip(m.box, obj.box, strict=True)))  # fmt: skip
        assert max(abs(a - b) for a, b in zip(nearest.box, obj.box, strict=True)) < 12  # pixels of 1080
        assert all(0 <= v <= limit for v, limit in zip(obj.box, (width, height) * 2, strict=True))


async def test_a_worker_reads_frames_from_the_frame_store_and_lets_go_of_those_no_longer_there(
    settings, kafka_topics, tmp_path
):
    """Frames handed over in the store are detected as if they had come in their messages; one whose file
    went (its result stored already, its job over) is committed with no result and no dead letter."""
    bus = photo("bus.jpg")
    store = FrameStore(tmp_path / "frames", 1 << 30)

    def frame(index: int) -> InferenceTask:
        return InferenceTask(event_id="job-s", frame=index, image=cv2.cvtColor(bus, cv2.COLOR_BGR2YUV_I420).tobytes(),
                             image_width=bus.shape[1], image_height=bus.shape[0])  # fmt: skip

    stored, gone = store.put(frame(0)), store.put(frame(5))
    store.discard("job-s", [5])
    assert stored.stored and gone.stored
    async with kafka_producer(settings) as producer:
        for value in (stored.to_bytes(), gone.to_bytes(), frame(10).to_bytes()):  # an inline frame beside them
            await producer.send_and_wait(settings.topic(topics.INFERENCE_TASKS), value, key=b"job-s", partition=0)
        worker = Worker(Models.only(build_detector(settings)), producer, settings,
                        frames=FrameStore(tmp_path / "frames", 0))  # fmt: skip
        committed, alive = await run_worker(settings, worker, 3)
    assert alive and sum(v or 0 for v in committed.values()) == 3
    assert worker.stats.frames_gone == 1 and worker.stats.dead_letters == 0
    results = {r.frame: r for r in (InferenceResult.from_bytes(m.value) for m in
                                    await read_topic(settings, topics.INFERENCE_RESULTS, 2))}  # fmt: skip
    assert sorted(results) == [0, 10]
    assert results[0].objects == results[10].objects and {o.class_name for o in results[0].objects} >= {"bus"}
    with pytest.raises(ValueError, match="FRAME_STORE_DIR is unset"):  # a worker without the store
        decode_task(SimpleNamespace(value=stored.to_bytes()))
