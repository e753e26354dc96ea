"""End to end: `vdetect up` on free ports, a real video uploaded over HTTP, detections back, with
live updates read over Server-Sent Events and a webhook received by a real HTTP server."""

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from pymongo import MongoClient

from api.projector import Projector
from api.readmodel import ReadModel
from events import topics
from events.clients import mongo_client
from events.contracts import FRAMES, OUTBOX, PREDICTIONS, JobEvent, JobState, documents
from events.indexes import MAIN_DB, RUNNER_DB
from events.settings import Settings
from tests import hostile
from tests.conftest import read_topic
from tests.harness import (
    Receiver,
    Stack,
    follow,
    local_stack,
    upload,
    wait_finished,
    wait_ready,
    wait_until,
    webhook_receiver,
)
from tests.servers import bikes_video, long_video

pytestmark = pytest.mark.e2e
SECRET = "whsec-e2e"
CHROMIUM = "/usr/lib/chromium/chromium"
PAINTED = """() => {
    const canvas = document.querySelector('#boxes');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) painted += 1;
    return painted;
}"""


def kill_the_runner(stack: Stack) -> None:
    os.kill(stack.pid("runner"), signal.SIGKILL)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver(SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # the runner is killed while the stack still waits for its services to be ready
    with local_stack(tmp_path_factory.mktemp("stack"), before_ready=kill_the_runner, WEBHOOK_SECRET=SECRET,
                     WEBHOOK_ALLOW_PRIVATE="true") as running:  # fmt: skip
        yield running


def stack_settings(stack: Stack) -> Settings:
    return Settings(
        mongo_uri=f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true",
        kafka_bootstrap_servers=f"127.0.0.1:{stack.ports['kafka']}",
        kafka_session_timeout_ms=6000,
    )


def test_the_stack_supervises_from_its_first_second(stack: Stack) -> None:
    events = [(line.get("event"), line.get("process")) for line in stack.lines()]
    exited = events.index(("process exited, restarting", "runner"))
    restarted = events.index(("process started", "runner"), exited)
    assert restarted < events.index(("stack ready", None))  # not after a readiness wait of up to 180 s


def test_a_real_video_uploaded_over_http_comes_back_with_detections(stack: Stack, receiver: Receiver) -> None:
    everything: list[tuple[float, dict]] = []
    follow(f"{stack.api}/jobs/events", everything)  # every job's changes, for as long as the stack runs
    started = time.monotonic()
    with bikes_video().open("rb") as video:
        response = httpx.post(f"{stack.api}/upload_video", files={"file": ("bikes.mp4", video, "video/mp4")},
                              data={"bucket": "videos", "callback_url": receiver.url("bikes")}, timeout=60)  # fmt: skip
    assert response.status_code == 200
    upload = response.json()
    assert set(upload) == {"status", "event_id"} and upload["status"] == "ok"
    live: list[tuple[float, dict]] = []
    stream = follow(f"{stack.api}/jobs/{upload['event_id']}/events", live)
    answer = wait_ready(upload["event_id"], stack.api)
    elapsed = time.monotonic() - started
    stream.join(30)
    assert not stream.is_alive()  # the job's stream ended after its final status
    assert set(answer) == {"status", "event_id", "fps", "model", "stride", "width", "height", "prediction", "summary",
                           "processing_time_seconds", "processing_time_formatted"}  # fmt: skip
    assert (answer["stride"], answer["width"], answer["height"]) == (5, 640, 272)  # tracked by default: a summary
    assert answer["fps"] == 25 and answer["model"]["name"] == "yolov10n"  # the built-in default
    assert answer["event_id"] == upload["event_id"]
    assert isinstance(answer["processing_time_seconds"], float) and answer["processing_time_formatted"].endswith("s")
    frames = answer["prediction"]
    assert [f["frame"] for f in frames] == list(range(0, 250, 5))
    for frame in frames:
        assert set(frame) == {"frame", "objects"}
        for obj in frame["objects"]:
            assert set(obj) - {"track_id"} == {"class", "box", "conf"}  # the seed's shape, and a track id
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 272  # pixels of the 640x272 original
            assert 0.25 <= obj["conf"] <= 1
    with_cars = sum(any(o["class"] == "car" for o in f["objects"]) for f in frames)
    assert with_cars > len(frames) / 2
    with_objects = sum(bool(f["objects"]) for f in frames)
    print(f"\nbikes.mp4 end to end: {elapsed:.1f}s, {len(frames)} frames, {with_objects} with detections, "
          f"{with_cars} with cars")  # fmt: skip

    # live updates: every status the job went through, progress never going back, and while frames
    # flowed, a message at least about once a second
    states = [data for _, data in live]
    assert states[-1]["status"] == "ready" and states[-1]["progress"] == 1.0 and states[-1]["frames_done"] == 50
    statuses = [s["status"] for s in states]
    assert statuses[0] in ("new", "sent") and "sent" in statuses and statuses.count("ready") == 1
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress)
    # from the runner's start (frames_total known) to `ready`: progress is published at most once a second,
    # the first one a second after the start, so a job whose frames all flow within that second (a fast
    # machine) has none in between, and any longer one has some
    flowing = [(at, s) for at, s in live if s["frames_total"] is not None]
    times = [at for at, _ in flowing]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    between = [s for _, s in flowing if 0 < s["frames_done"] < 50]
    print(f"live updates: {len(states)} messages, {len(between)} progress ones in {times[-1] - times[0]:.2f}s, "
          f"largest gap {max(gaps, default=0):.2f}s, median {statistics.median(gaps or [0]):.2f}s")  # fmt: skip
    assert flowing[-1][1]["status"] == "ready" and max(gaps, default=0) < 2.5
    if times[-1] - times[0] >= 2:  # progress in between, with the time left
        assert any(s["frames_total"] == 50 and s["eta_seconds"] is not None for s in between)

    def seen_by_all_jobs_stream() -> list[str]:  # another connection: it may be a moment behind
        mine = [data["status"] for _, data in everything if data["event_id"] == upload["event_id"]]
        return mine if mine and mine[-1] == "ready" else []

    assert "sent" in wait_until(seen_by_all_jobs_stream, 10, "the all-jobs stream")

    # the webhook: signed, once, with where to fetch the result
    wait_until(lambda: receiver.delivered() >= {upload["event_id"]}, 30, "the webhook")
    (hook,) = receiver.attempts()[upload["event_id"]]
    assert hook["signed"] and hook["body"]["status"] == "ready" and hook["body"]["error"] is None
    assert hook["body"]["result_url"] == f"{stack.api}/result_video/{upload['event_id']}"

    operations = httpx.get(f"{stack.api}/status/all").json()
    mine = next(o for o in operations["operations"] if o["video_id"] == upload["event_id"])
    assert set(mine) >= {"video_id", "status_code", "status_description", "processing_time_seconds",
                         "processing_time_formatted"}  # fmt: skip
    assert mine["status_code"] == "ready" and operations["total"] == len(operations["operations"])
    assert httpx.get(f"http://127.0.0.1:{stack.runner_port}/health").json()["status"] == "ok"
    data = httpx.get(f"http://127.0.0.1:{stack.inference_port}/api/data").json()
    assert data["frames_processed"] > 0 and data["classes"] == 80  # one of the workers: they share the frames


def test_the_web_page_uploads_follows_and_plays_a_result_with_its_boxes(stack: Stack, tmp_path) -> None:
    from playwright.sync_api import Position, sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1100, "height": 1000})
        started = time.monotonic()
        page.goto(stack.api.removesuffix("/api") + "/")
        page.wait_for_load_state("load")
        loaded = time.monotonic() - started
        before = httpx.get(f"{stack.api}/status/all").json()["total"]
        page.set_input_files("#file", str(bikes_video()))  # the file picker (drop uses the same upload)
        page.wait_for_function("() => document.querySelector('.upload .state').textContent === 'queued'")
        all_ready = f"() => {{ const rows = [...document.querySelectorAll('#job-rows tr')];" \
                    f" return rows.length === {before + 1} && rows.every(r => r.querySelector('.status')" \
                    ".textContent === 'ready' && r.querySelector('progress').value === 1); }"  # fmt: skip
        page.wait_for_function(all_ready, timeout=120_000)  # live, from the events stream
        shown_ready = time.monotonic()
        rows = page.eval_on_selector_all("#job-rows tr", "rows => rows.map(r => [r.id, r.querySelector('.status')"
                                         ".textContent])")  # fmt: skip
        jobs = httpx.get(f"{stack.api}/status/all").json()["operations"]
        assert sorted(rows) == sorted([f"job-{op['video_id']}", op["status_code"]] for op in jobs)
        page.locator("#job-rows button:visible").first.click()  # the newest job: the page's own upload
        page.wait_for_function("() => document.querySelector('#video').readyState >= 2", timeout=30_000)
        page.evaluate("document.querySelector('#video').currentTime = 3.0")  # seek: the player asks for a range
        page.wait_for_function("() => Number(document.querySelector('#boxes').dataset.frame) === 75"
                               " && Number(document.querySelector('#boxes').dataset.drawn) > 0")  # fmt: skip
        boxes_after = time.monotonic() - shown_ready
        painted = page.evaluate(PAINTED)
        page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)
        # the summary counts objects (tracks), not boxes
        summary = page.eval_on_selector_all("#summary tbody tr", "rows => rows.map(r => r.children[0].textContent)")
        assert "car" in summary, summary
        # a line drawn on the player (two clicks at x = 250, top to bottom), counted by the API from the tracks
        frame = page.locator("#boxes").bounding_box()
        scale = frame["width"] / 640
        page.click("#draw-line")
        page.locator("#boxes").click(position=Position(x=250 * scale, y=2))
        page.locator("#boxes").click(position=Position(x=250 * scale, y=frame["height"] - 2))
        page.wait_for_function("() => document.querySelector('#zone-counts tbody').dataset.state === 'counted'")
        sent = json.loads(page.eval_on_selector("#zone-counts tbody", "body => body.dataset.zones"))
        shown = page.eval_on_selector_all("#zone-counts tbody tr", "rows => rows.map(r => [r.dataset.class, "
                                          "JSON.parse(r.dataset.counts)])")  # fmt: skip
        (line,) = sent
        assert abs(line["line"][0][0] - 250) <= 2 and abs(line["line"][1][0] - 250) <= 2, line
        page_job = page.eval_on_selector("#result-id", "code => code.textContent")
        (opened,) = [op["video_id"] for op in jobs if op["video_id"].startswith(page_job)]
        counted = httpx.post(f"{stack.api}/jobs/{opened}/zones", json={"zones": sent}, timeout=30).json()
        assert dict(shown) == counted["zones"][line["name"]]["counts"], (shown, counted)
        assert dict(shown).get("car", {}).get("out", 0) >= 1, shown  # the car that drives past the post
        page.click("#render")  # the annotated video, asked for from the page, made by the render worker
        page.wait_for_function("() => document.querySelector('#render-state').textContent === 'ready'", timeout=60_000)
        annotated = httpx.get(stack.api.removesuffix("/api") + page.locator("#annotated").get_attribute("href"))
        assert annotated.status_code == 200 and annotated.headers["content-type"] == "video/mp4"
        page.click("#clear-zones")
        for box in page.locator("#classes input").all():  # the class filter: nothing ticked, nothing drawn
            box.uncheck()
        assert page.evaluate(PAINTED) == 0
        assert page.locator("#csv").get_attribute("download").endswith(".csv")
        assert page.locator("#mot").get_attribute("href").endswith("?format=mot")
        chromium.close()
    assert painted > 200  # boxes and labels on the canvas over the video
    print(f"\nweb page: loaded in {loaded * 1000:.0f} ms; ready -> boxes on screen {boxes_after * 1000:.0f} ms;"
          f" {painted} pixels painted; screenshot {tmp_path / 'web-page.png'}")  # fmt: skip


def test_the_command_line_submits_waits_and_writes_results(stack: Stack, tmp_path) -> None:
    api = stack.api.removesuffix("/api")
    out = tmp_path / "result.csv"
    vdetect = [sys.executable, "-m", "vdetect"]
    submitted = subprocess.run([*vdetect, "submit", str(bikes_video()), "--api", api, "--wait", "--output", str(out)],
                               capture_output=True, text=True, timeout=240)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    event_id = submitted.stdout.strip()
    progress = submitted.stderr.splitlines()  # not a terminal: one plain line per change, no bar drawing
    assert progress[-1] == f"{event_id} ready 100%" and "\x1b" not in submitted.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "event_id,frame,class,conf,x1,y1,x2,y2,track_id" and len(rows) > 50
    assert all(row.startswith(f"{event_id},") for row in rows[1:])
    listed = subprocess.run([*vdetect, "jobs", "--api", api], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    assert any(event_id in line and "bikes.mp4" in line and "ready" in line for line in listed.stdout.splitlines())
    status = subprocess.run([*vdetect, "status", "--api", api], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "every service is running" in status.stdout, status.stdout + status.stderr
    result = subprocess.run([*vdetect, "result", event_id, "--api", api], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout)["event_id"] == event_id
    tracks, coco = tmp_path / "tracks.txt", tmp_path / "coco.json"  # MOT text by its suffix, COCO by --format
    for path, chosen in ((tracks, []), (coco, ["--format", "coco"])):
        written = subprocess.run([*vdetect, "result", event_id, "--api", api, "--output", str(path), *chosen],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert written.returncode == 0, written.stderr
    served = httpx.get(f"{stack.api}/result_video/{event_id}", params={"format": "mot"}, timeout=30).text
    assert tracks.read_text() == served and served.count(",-1,-1,-1\n") == len(served.splitlines()) > 10
    assert len(json.loads(coco.read_text())["images"]) == 50
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 5000)
    failed = subprocess.run([*vdetect, "submit", str(corrupt), "--api", api, "--wait"], capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    assert failed.returncode == 1 and "failed" in failed.stderr
    missing = subprocess.run([*vdetect, "submit", "no-such.mp4", "--api", api], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unreachable = subprocess.run([*vdetect, "jobs", "--api", "http://127.0.0.1:9"], capture_output=True, text=True)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_every_service_serves_metrics_that_moved_with_the_jobs(stack: Stack) -> None:
    ports = {"api": stack.ports["api"], "runner": stack.runner_port, "outbox-relay": stack.ports["outbox-relay"],
             "s3-relay": stack.ports["s3-relay"], "webhook-relay": stack.ports["webhook-relay"],
             **{name: port for name, port in stack.ports.items() if name.startswith("inference")}}  # fmt: skip
    scraped, seconds = {}, []
    for name, port in ports.items():
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        seconds.append(time.monotonic() - started)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain"), name
        scraped[name] = {
            line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in answer.text.splitlines()
            if line.startswith("vdetect_")
        }  # fmt: skip
        assert all("event_id" not in sample for sample in scraped[name]), name  # bounded labels

    def total(name: str, sample: str) -> float:
        return sum(value for key, value in scraped[name].items() if key.startswith(sample))

    assert total("api", 'vdetect_jobs_total{status="ready"}') >= 1
    assert total("api", 'vdetect_jobs_total{status="failed"}') >= 1
    assert total("runner", 'vdetect_frames_total{stage="published"}') >= 50
    assert total("runner", 'vdetect_frames_total{stage="stored"}') >= 50
    inferred = sum(total(n, 'vdetect_frames_total{stage="inferred"}') for n in ports if n.startswith("inference"))
    assert inferred >= 50  # each worker scraped on its own port; together they did every frame
    assert sum(total(n, "vdetect_inference_seconds_count") for n in ports if n.startswith("inference")) > 0
    for relay in ("outbox-relay", "s3-relay"):
        assert total(relay, f'vdetect_relay_lag_seconds_count{{relay="{relay}"}}') > 0, relay
    # labelled series exist from the start, at 0 where nothing happened, in every process that exports them
    for relay in ("outbox-relay", "s3-relay", "webhook-relay"):
        assert scraped[relay][f'vdetect_resume_tokens_lost_total{{relay="{relay}"}}'] == 0, relay
    for name in [n for n in ports if n.startswith("inference")] + ["runner", "api"]:
        letters = [key for key in scraped[name] if key.startswith("vdetect_dead_letters_total{")]
        assert letters and all(scraped[name][key] == 0 for key in letters), name
    assert all(
        f'vdetect_jobs_total{{status="{status}"}}' in scraped["api"] for status in ("new", "sent", "ready", "failed")
    )
    lag = [key for key in scraped["runner"] if key.startswith("vdetect_consumer_lag{")]
    assert any(f'{topics.RUNNER_RESULTS_GROUP}"' in key for key in lag), lag  # labelled with its group
    print(
        f"\nmetrics: {len(ports)} endpoints scraped, {1000 * statistics.median(seconds):.1f} ms median, "
        f"{1000 * max(seconds):.1f} ms slowest"
    )


def peak_mb(pid: int) -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) // 1024


def test_a_corrupt_video_ends_failed_with_its_reason(stack: Stack, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 5000)  # looks like MP4, is not
    answer = wait_finished(upload(stack.api, corrupt), stack.api)
    assert answer["status"] == "failed" and "video" in answer["error"]
    (operation,) = [
        o for o in httpx.get(f"{stack.api}/status/all").json()["operations"] if o["video_id"] == answer["event_id"]
    ]
    assert operation["status_code"] == "failed" and operation["error"] == answer["error"]


CRAFTED = {  # the red-team pass's files: each stopped the runner or took it to gigabytes before
    "two_programs.ts": (hostile.two_programs_ts, "could not be decoded"),
    "80_million_frames.mp4": (hostile.frame_bomb, "declares 80000000 frames"),
    "larger_than_declared.mp4": (lambda: hostile.larger_than_declared(8200, 1000), "a frame is 8200x1000 pixels"),
}


def test_crafted_videos_uploaded_over_http_fail_their_own_jobs_and_never_the_runner(stack: Stack, tmp_path) -> None:
    runner = stack.pid("runner")
    ids = {}
    for name, (make, _) in CRAFTED.items():
        (tmp_path / name).write_bytes(make())
        ids[name] = upload(stack.api, tmp_path / name)
    fine = upload(stack.api, bikes_video())
    for name, (_, reason) in CRAFTED.items():
        answer = wait_finished(ids[name], stack.api)
        assert answer["status"] == "failed" and reason in answer["error"], (name, answer)
    assert wait_ready(fine, stack.api)["status"] == "ready"
    assert stack.pid("runner") == runner  # never restarted
    assert peak_mb(runner) < 1024, f"the runner peaked at {peak_mb(runner)} MB"
    settings = stack_settings(stack)  # the answers read storage; the read model folds `ready` moments later
    with MongoClient(**settings.mongo()) as client:
        outbox = client[settings.main_db][OUTBOX]
        ended = {"_id": {"$in": [*ids.values(), fine]}, "status": {"$in": ["ready", "failed"]}}
        wait_until(lambda: outbox.count_documents(ended) == len(ids) + 1, 30, "the read model to settle")


def test_replaying_the_job_events_rebuilds_the_same_read_model_and_the_indexes_exist(stack: Stack, tmp_path) -> None:
    settings = stack_settings(stack)

    async def replay() -> tuple[dict, dict, dict]:
        async with mongo_client(**settings.mongo()) as client:
            live = {doc["_id"]: JobState.model_validate(doc) async for doc in client[settings.main_db][OUTBOX].find()}
            rebuilt = client["replayed"][OUTBOX]
            await rebuilt.drop()
            count = await client[settings.main_db][OUTBOX].count_documents({})
            messages = await read_topic(settings, topics.JOB_EVENTS, 4 * count)  # at least accepted, sent...
            await Projector(ReadModel(rebuilt)).project([JobEvent.from_bytes(m.value) for m in messages])
            replayed = {doc["_id"]: JobState.model_validate(doc) async for doc in rebuilt.find()}
            indexes = {
                name: set(await client[database][collection].index_information())
                for name, database, collection in (("main", settings.main_db, OUTBOX),
                                                   ("runner", settings.runner_db, PREDICTIONS))
            }  # fmt: skip
            return live, replayed, indexes

    live, replayed, indexes = asyncio.run(replay())
    # the API and the runner created their indexes when they started (events/indexes.py)
    assert indexes["main"] >= {model.document["name"] for model in MAIN_DB[OUTBOX]}
    assert indexes["runner"] >= {model.document["name"] for model in RUNNER_DB[PREDICTIONS]}
    assert {state.status for state in live.values()} == {"ready", "failed"}  # both endings are replayed
    assert replayed == live
    print(f"\nreplay: {len(live)} jobs rebuilt from job_events, identical to the read model")


def test_a_small_job_uploaded_after_a_big_one_is_not_queued_behind_it(stack: Stack, tmp_path) -> None:
    big = long_video(bikes_video(), tmp_path, 6)  # 300 sampled frames against 50: a margin on a busy machine
    big_id = upload(stack.api, big)
    wait_until(lambda: httpx.get(f"{stack.api}/result_video/{big_id}").json().get("frames_done", 0) > 0, 60,
               "the big job's first results")  # fmt: skip
    small_id = upload(stack.api, bikes_video())
    wait_ready(small_id, stack.api)
    big_answer = httpx.get(f"{stack.api}/result_video/{big_id}").json()
    assert big_answer["status"] != "ready"  # the small one shared the workers; it did not wait for the big one
    assert len(wait_ready(big_id, stack.api)["prediction"]) == 300


def test_request_reprocesses_a_stored_video_then_cleanup_empties_everything(stack: Stack) -> None:
    with bikes_video().open("rb") as video:
        source = httpx.post(f"{stack.api}/upload_video", files={"file": ("b.mp4", video)}, timeout=60).json()
    answer = httpx.post(f"{stack.api}/request", json={"object": f"input/{source['event_id']}.mp4"})
    assert answer.status_code == 200
    again = wait_ready(answer.json()["event_id"], stack.api)
    first = wait_ready(source["event_id"], stack.api)
    assert again["prediction"] == first["prediction"]  # same video, same model, same detections
    cleaned = httpx.delete(f"{stack.api}/cleanup/all").json()
    assert cleaned["status"] == "ok" and cleaned["jobs_deleted"] >= 2
    assert httpx.get(f"{stack.api}/status/all").json() == {"operations": [], "total": 0, "next": None}
    assert httpx.get(f"{stack.api}/result_video/{source['event_id']}").status_code == 404
    settings = stack_settings(stack)

    async def runner_db_is_empty() -> bool:  # the runner forgot the jobs too, told by `deleted` events
        async with mongo_client(**settings.mongo()) as client:
            db = client[settings.runner_db]
            return await db[PREDICTIONS].count_documents({}) == 0 and await db[FRAMES].count_documents({}) == 0

    wait_until(lambda: asyncio.run(runner_db_is_empty()), 30, "the runner to forget deleted jobs")


def session_members(session: int) -> set[int]:
    """The processes of a session (`vdetect up` starts each service as a session leader)."""
    members = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                members.add(int(entry.name))
        except (OSError, IndexError):
            continue
    return members


def test_a_service_that_dies_is_restarted_and_leaves_no_process_behind(stack: Stack) -> None:
    wait_ready(upload(stack.api, bikes_video()), stack.api)  # the runner has started its probes' fork server
    old = stack.pid("runner")
    helpers = session_members(old) - {old}
    assert any("forkserver" in Path(f"/proc/{pid}/cmdline").read_text() for pid in helpers)  # a SIGKILL orphans it
    os.kill(old, signal.SIGKILL)

    def runner_named_down() -> dict | None:  # while it waits for its back-off, health says so and why
        health = httpx.get(f"{stack.api}/health", timeout=5).json()
        return next((down for down in health["down"] if down["name"] == "runner"), None) if health["down"] else None

    down = wait_until(runner_named_down, 10, "health to name the runner", poll=0.05)
    assert down["state"] == "restarting" and down["reason"].startswith("killed by signal 9")
    wait_until(lambda: stack.pid("runner") != old, 60, "runner restart")
    wait_until(lambda: httpx.get(f"{stack.api}/health", timeout=5).json()["down"] == [], 60, "health to clear")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{stack.runner_port}/health").status_code == 200, 60, "health")
    wait_until(lambda: not session_members(old), 30, "the dead runner's fork server to end")


def test_every_document_the_services_wrote_is_its_model_with_no_field_beyond_it(stack: Stack) -> None:
    """Run after the jobs above (uploads, webhooks, failures, deletions): a field written by any service
    and declared by no model fails here (a model reading with `extra="ignore"` would drop it silently)."""
    settings = stack_settings(stack)

    async def strays() -> tuple[dict[str, int], list[str]]:
        checked, found = {}, []
        async with mongo_client(**settings.mongo()) as client:
            for (role, collection), model in documents().items():
                config = {**model.model_config, "extra": "forbid"}
                strict: type[BaseModel] = type(f"Strict{model.__name__}", (model,), {"model_config": config})
                database = settings.main_db if role == "main" else settings.runner_db
                checked[f"{role}.{collection}"] = 0
                async for doc in client[database][collection].find():
                    checked[f"{role}.{collection}"] += 1
                    try:
                        strict.model_validate(doc)
                    except ValidationError as error:
                        found.append(f"{role}.{collection}: {error}")
        return checked, found

    checked, found = asyncio.run(strays())
    assert not found, found
    assert checked["main.outbox"] and checked["runner.runner_predictions"] and checked["main.relay_checkpoints"]


def test_sigterm_stops_the_whole_stack_cleanly(stack: Stack) -> None:
    pids = [
        stack.pid(name) for name in ("api", "runner", "inference", "outbox-relay", "s3-relay", "tansu", "secantusdb")
    ]
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(90) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any(line.get("event") == "stack stopped" for line in stack.lines())
