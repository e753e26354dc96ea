"""`vdetect bench`: the pipeline against the model alone and against Ultralytics, side by side in one run.

Figures printed (and returned as one JSON line):
- detector alone: frames/s of the ONNX detector on exactly the frames the pipeline samples (decoded
  from the same JPEGs inference receives), in batches of INFERENCE_BATCH_SIZE: one process using
  every core, and one single-threaded process per core (as the local stack runs it);
- pipeline: frames/s from the upload request to `ready` on the local stack (after a warm-up job);
- Ultralytics: `predict(source=video, vid_stride=5)` on the same video and weights, when an
  interpreter with Ultralytics is given or found;
- relay latency p50/p95: outbox insert -> Kafka publish; `predictable` -> detection file written;
- peak memory (VmHWM) of the API uploading a small and a large file, and of the runner on a short and
  a long video.
"""

import asyncio
import base64
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from events import topics
from events.clients import ensure_topics, kafka_consumer, kafka_producer, mongo_client
from events.contracts import OUTBOX, PREDICTIONS, OutboxDocument, OutboxPayload, RunnerPrediction, detection_key
from events.settings import Settings
from events.storage import DirectoryStore
from inference.service import build_detector
from relays import outbox as outbox_relay
from relays import s3 as s3_relay
from runner.frames import encode_frame, sample_frames
from vdetect.harness import Stack, local_stack, upload, wait_finished, wait_ready

ULTRALYTICS = """
import json, sys, time
from ultralytics import YOLO
video, weights = sys.argv[1], sys.argv[2]
model = YOLO(weights)
next(iter(model.predict(video, vid_stride=5, stream=True, verbose=False)))  # warm-up
started = time.perf_counter()
frames = sum(1 for _ in model.predict(video, vid_stride=5, conf=0.25, iou=0.45, stream=True, verbose=False))
print(json.dumps({"frames": frames, "seconds": time.perf_counter() - started}))
"""


def sampled_frames(video: Path, settings: Settings) -> list[np.ndarray]:
    """The frames inference receives: sampled, preprocessed, JPEG-encoded, decoded again."""
    frames = []
    for _, frame in sample_frames(video, settings.frame_stride):
        jpeg = np.frombuffer(base64.b64decode(encode_frame(frame, settings.jpeg_quality)), np.uint8)
        frames.append(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    return frames


def timed_detection(frames: list[np.ndarray], settings: Settings) -> float:
    """Seconds the detector takes on these frames in batches of INFERENCE_BATCH_SIZE, after a warm-up."""
    detector, batch = build_detector(settings), settings.inference_batch_size
    detector.detect(frames[:batch])
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect(frames[i : i + batch])
    return time.perf_counter() - started


def detector_alone(video: Path, settings: Settings) -> dict:
    frames = sampled_frames(video, settings)
    seconds = timed_detection(frames, settings)
    return {"frames": len(frames), "seconds": round(seconds, 3), "fps": round(len(frames) / seconds, 2)}


def _detect_share(video: Path, worker: int, workers: int, barrier, results) -> None:  # noqa: ANN001
    """One single-threaded detector on every `workers`-th sampled frame (in its own process)."""
    settings = Settings(inference_threads=1)
    frames = sampled_frames(video, settings)[worker::workers]
    barrier.wait()  # frames extracted everywhere: the detectors start together
    results.put((len(frames), timed_detection(frames, settings)))


def detector_per_core(video: Path, workers: int) -> dict:
    """The detector alone as the local stack runs it: one single-threaded process per core, in parallel."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_detect_share, args=(video, i, workers, barrier, results)) for i in range(workers)
    ]
    for process in processes:
        process.start()
    shares = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    frames, seconds = sum(n for n, _ in shares), max(s for _, s in shares)
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2), "processes": workers}


def ultralytics(video: Path, python: str, weights: str) -> dict | None:
    done = subprocess.run([python, "-c", ULTRALYTICS, str(video), weights], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": round(result["seconds"], 3), "fps": round(result["frames"] / result["seconds"], 2)}


def pipeline(stack: Stack, video: Path) -> dict:
    """From the upload request to `ready`, polling the API every 50 ms."""
    started = time.perf_counter()
    answer = wait_finished(upload(stack.api, video), stack.api, poll=0.05)
    seconds = time.perf_counter() - started
    if answer["status"] != "ready":
        raise RuntimeError(f"benchmark job failed: {answer.get('error')}")
    frames = len(answer["prediction"])
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2)}


def percentiles(samples: list[float]) -> dict:
    ms = sorted(1000 * s for s in samples)
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1), "n": len(ms)}


async def relay_latency(settings: Settings, store: DirectoryStore, count: int) -> dict:
    """Both relays in this process, on databases and topics of their own, against the stack's servers."""
    await ensure_topics(settings)
    stop = asyncio.Event()
    async with (
        mongo_client(settings.mongo_uri) as client,
        kafka_producer(settings) as producer,
        kafka_consumer(settings, topics.OUTBOX_EVENTS, f"bench-{uuid.uuid4().hex}") as consumer,
    ):
        main_db, runner_db = client[settings.main_db], client[settings.runner_db]
        relays = [outbox_relay.build(main_db, producer, settings), s3_relay.build(runner_db, store, settings)]
        tasks = [asyncio.create_task(relay.run(stop)) for relay in relays]
        await asyncio.sleep(2)
        outbox, s3 = [], []
        for _ in range(count):
            event_id = str(uuid.uuid4())
            doc = OutboxDocument(id=event_id, payload=OutboxPayload(bucket="bench", object="input/x.mp4"))
            inserted = time.time()
            await main_db[OUTBOX].insert_one(doc.to_mongo())
            message = await asyncio.wait_for(consumer.getone(), 30)
            outbox.append(message.timestamp / 1000 - inserted)  # the producer stamps the record on send
            await runner_db[PREDICTIONS].insert_one(RunnerPrediction(id=event_id, bucket="bench").to_mongo())
            marked = time.time()
            await runner_db[PREDICTIONS].update_one({"_id": event_id}, {"$set": {"status": "predictable"}})
            while (written := await store.modified_at("bench", detection_key(event_id))) is None:  # noqa: ASYNC110 - polling a side effect of another task
                await asyncio.sleep(0.001)
            s3.append(written.timestamp() - marked)
        stop.set()
        await asyncio.gather(*tasks)
    return {"outbox_insert_to_kafka": percentiles(outbox), "predictable_to_object": percentiles(s3)}


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def api_memory(stack: Stack, video: Path, folder: Path, large_mb: int) -> dict:
    result = {}
    for name, size in (("small_10mb", 10 * 2**20), (f"large_{large_mb}mb", large_mb * 2**20)):
        path = folder / f"{name}.mp4"
        with path.open("wb") as out:  # a real video, padded: the API stores what it is given
            out.write(video.read_bytes())
            out.truncate(size)
        pid = stack.pid("api")
        reset_peak(pid)
        upload(stack.api, path)
        result[name] = round(peak_rss_kb(pid) / 1024, 1)
        path.unlink()
    return {"peak_rss_mb": result}


def long_video(video: Path, folder: Path, loops: int) -> Path:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (item := capture.read())[0]:
        frames.append(item[1])
    height, width = frames[0].shape[:2]
    path = folder / f"long_x{loops}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    for _ in range(loops):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return path


def runner_memory(stack: Stack, video: Path, folder: Path, loops: int) -> dict:
    result = {}
    for name, path in (("short", video), (f"long_x{loops}", long_video(video, folder, loops))):
        pid = stack.pid("runner")
        reset_peak(pid)
        answer = wait_ready(upload(stack.api, path), stack.api)
        result[name] = {"frames": len(answer["prediction"]), "peak_rss_mb": round(peak_rss_kb(pid) / 1024, 1)}
    return result


def run(
    video: Path,
    python: str | None,
    weights: str | None,
    large_mb: int,
    measure_loops: int,
    long_loops: int,
    relay_samples: int,
) -> dict:
    """The throughput figures come from the video played `measure_loops` times (fixed costs of a job,
    such as the upload and the relays, are then small beside the frames); the end-to-end time of the
    video itself is reported too."""
    settings = Settings()
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory(prefix="vdetect-bench-") as tmp:
        measured = long_video(video, Path(tmp), measure_loops) if measure_loops > 1 else video
        report["video"] = {"name": video.name, "measured_as": measured.name}
        report["detector_alone"] = detector_alone(measured, settings)
        report["detector_alone_per_core"] = detector_per_core(measured, os.cpu_count() or 1)
        report["ultralytics"] = ultralytics(measured, python or sys.executable, weights or str(settings.model_path))
        with local_stack(Path(tmp) / "stack") as stack:
            pipeline(stack, video)  # warm-up: consumer groups joined, models loaded
            report["end_to_end_short_video"] = pipeline(stack, video)
            report["pipeline"] = pipeline(stack, measured)
            isolated = Settings(
                mongo_uri=f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true",
                main_db="bench_main",
                runner_db="bench_runner",
                kafka_bootstrap_servers=f"127.0.0.1:{stack.ports['kafka']}",
                kafka_topic_prefix="bench.",
                kafka_session_timeout_ms=6000,
            )
            store = DirectoryStore(Path(tmp) / "bench-store")
            report["relay_latency"] = asyncio.run(relay_latency(isolated, store, relay_samples))
            report["api_memory"] = api_memory(stack, video, Path(tmp), large_mb)
            report["runner_memory"] = runner_memory(stack, video, Path(tmp), long_loops)
    pipeline_fps = report["pipeline"]["fps"]
    best = max(report["detector_alone"]["fps"], report["detector_alone_per_core"]["fps"])
    report["ratios"] = {
        "pipeline_vs_detector": round(pipeline_fps / report["detector_alone"]["fps"], 3),
        "pipeline_vs_best_detector": round(pipeline_fps / best, 3),
    }
    if report["ultralytics"]:
        report["ratios"]["pipeline_vs_ultralytics"] = round(pipeline_fps / report["ultralytics"]["fps"], 3)
    return report
