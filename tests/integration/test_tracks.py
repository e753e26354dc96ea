"""Job options, zones recounted from stored tracks, the exports and the annotated video's endpoints and
worker, against the real API (real SecantusDB, a storage folder) and the real render code on real video."""

import asyncio
import json
from collections.abc import Iterator

import av
import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient

from analytics.analysis import Analysis
from events import detection_file
from events.contracts import OUTBOX, JobOptions, StorageLocation, annotated_failure_key, annotated_key, detection_key
from events.storage import DirectoryStore
from render.service import Renderer
from tests.conftest import api_client
from tests.servers import bikes_video

DOOR = {"name": "door", "line": [[320, 0], [320, 272]]}
# a person walking right across x = 320 (its box's bottom centre), one box each sampled frame
WALK = [{"frame": f, "objects": [{"class": "person", "box": [200 + 4 * f, 50, 240 + 4 * f, 200], "conf": 0.9}]}
        for f in range(0, 50, 5)]  # fmt: skip


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with api_client(settings) as test_client:
        yield test_client


def upload(client: TestClient, **form: str):
    return client.post("/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes(), "video/mp4")},
                       data=form)  # fmt: skip


def finish(settings, event_id: str, frames: list[dict], options: JobOptions | None = None) -> dict:
    """Store the job's detection file as the S3 relay writes it (tracked through `Analysis`); its tail."""
    analysis = Analysis(options or JobOptions(zones=[DOOR]), 25.0, 5, len(frames))
    target = settings.storage_dir / "videos" / detection_key(event_id)
    target.parent.mkdir(parents=True, exist_ok=True)

    async def docs():
        for frame in frames:
            yield frame

    head = {"event_id": event_id, "total_frames": len(frames), "fps": 25.0, "stride": 5, "width": 640, "height": 272,
            "tracked": analysis.tracked}  # fmt: skip
    with target.open("wb") as out:
        asyncio.run(detection_file.write(out, head, analysis.frames(docs()), analysis.tail))
    return json.loads(json.dumps(analysis.tail()))


def outbox(settings, event_id: str) -> dict:
    with MongoClient[dict](settings.mongo()["host"]) as mongo:
        return mongo[settings.main_db][OUTBOX].find_one({"_id": event_id}) or {}


@pytest.mark.parametrize(
    ("form", "message"),
    [({"zones": "not json"}, "invalid job options"), ({"zones": json.dumps([DOOR]), "track": "false"}, "track=true"),
     ({"zones": json.dumps([DOOR, DOOR])}, "unique"), ({"render": "perhaps"}, "render must be true or false"),
     ({"zones": json.dumps([{"name": "x", "line": [[0, 0]]}])}, "zones.0"),
     ({"zones": json.dumps([{"name": "x", "line": [[0, 0], [1, 1]], "polygon": [[0, 0], [1, 0], [1, 1]]}])}, "zones")],
)  # fmt: skip
def test_bad_job_options_get_a_400_saying_what_and_store_nothing(client, settings, form, message) -> None:
    answer = upload(client, **form)
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.json()
    assert not list(settings.storage_dir.rglob("*.mp4")) and client.get("/api/status/all").json()["total"] == 0


def test_options_travel_with_the_job(client, settings) -> None:
    event_id = upload(client, zones=json.dumps([DOOR]), render="true").json()["event_id"]
    options = outbox(settings, event_id)["payload"]["options"]
    assert options == {
        "track": True,
        "zones": [{"name": "door", "line": [[320.0, 0.0], [320.0, 272.0]]}],
        "render": True,
    }
    plain = upload(client).json()["event_id"]
    assert outbox(settings, plain)["payload"]["options"] == {"track": True, "zones": [], "render": False}
    requested = client.post("/api/request", json={"object": f"input/{plain}.mp4", "track": False})
    assert outbox(settings, requested.json()["event_id"])["payload"]["options"]["track"] is False
    refused = client.post("/api/request", json={"object": f"input/{plain}.mp4", "track": False, "zones": [DOOR]})
    assert refused.status_code == 400 and "track=true" in refused.json()["detail"]


def test_the_ready_answer_carries_track_ids_the_summary_and_the_zones(client, settings) -> None:
    event_id = upload(client).json()["event_id"]
    finish(settings, event_id, WALK)
    answer = client.get(f"/api/result_video/{event_id}").json()
    assert answer["status"] == "ready" and answer["width"] == 640 and answer["stride"] == 5
    assert {o.get("track_id") for f in answer["prediction"][1:] for o in f["objects"]} == {1}
    assert answer["summary"]["classes"]["person"]["tracks"] == 1
    assert answer["zones"]["door"]["counts"] == {"person": {"in": 0, "out": 1}}


def test_zones_are_recounted_from_the_stored_tracks(client, settings) -> None:
    event_id = upload(client).json()["event_id"]
    tail = finish(settings, event_id, WALK)
    again = client.post(f"/api/jobs/{event_id}/zones", json={"zones": [DOOR]})
    assert again.status_code == 200 and again.json()["zones"]["door"] == tail["zones"]["door"]
    other = {"name": "left", "polygon": [[0, 0], [300, 0], [300, 272], [0, 272]]}
    counted = client.post(f"/api/jobs/{event_id}/zones", json={"zones": [other]}).json()["zones"]["left"]
    assert counted["counts"]["person"]["exited"] == 1 and counted["kind"] == "polygon"
    assert client.post(f"/api/jobs/{event_id}/zones", json={"zones": [DOOR, DOOR]}).status_code == 400
    waiting = upload(client).json()["event_id"]
    not_ready = client.post(f"/api/jobs/{waiting}/zones", json={"zones": [DOOR]})
    assert not_ready.status_code == 409 and "not ready" in not_ready.json()["detail"]
    untracked = upload(client).json()["event_id"]
    finish(settings, untracked, WALK, JobOptions(track=False))
    refused = client.post(f"/api/jobs/{untracked}/zones", json={"zones": [DOOR]})
    assert refused.status_code == 409 and "not tracked" in refused.json()["detail"]
    unknown = client.post(f"/api/jobs/{'0' * 8}-0000-4000-8000-{'0' * 12}/zones", json={"zones": [DOOR]})
    assert unknown.status_code == 404


def test_the_result_is_exported_as_csv_mot_and_coco(client, settings) -> None:
    event_id = upload(client).json()["event_id"]
    finish(settings, event_id, WALK)
    csv = client.get(f"/api/result_video/{event_id}", params={"format": "csv"})
    assert (
        csv.headers["content-type"].startswith("text/csv") and f"{event_id}.csv" in csv.headers["content-disposition"]
    )
    rows = csv.text.splitlines()
    assert rows[0].endswith(",track_id") and len(rows) == 1 + len(WALK) and rows[-1].endswith(",1")
    mot = client.get(f"/api/result_video/{event_id}", params={"format": "mot"}).text.splitlines()
    assert mot[0] == "6,1,220.00,50.00,40.00,150.00,0.9000,-1,-1,-1" and len(mot) == len(WALK) - 1
    coco = client.get(f"/api/result_video/{event_id}", params={"format": "coco"}).json()
    assert len(coco["images"]) == len(WALK) and coco["images"][0]["width"] == 640
    assert len(coco["annotations"]) == len(WALK) and coco["categories"] == [{"id": 1, "name": "person"}]
    assert client.get(f"/api/result_video/{event_id}", params={"format": "xml"}).status_code == 422
    tags = {client.get(f"/api/result_video/{event_id}", params={"format": f}).headers["etag"] for f in ("json", "csv")}
    assert len(tags) == 2  # each format its own tag: a cached JSON answer is never taken for the CSV


def test_the_annotated_video_is_asked_for_served_with_ranges_and_its_failure_said(client, settings) -> None:
    event_id = upload(client).json()["event_id"]
    assert client.post(f"/api/jobs/{event_id}/render").status_code == 409  # not finished
    finish(settings, event_id, WALK)
    assert client.get(f"/api/jobs/{event_id}/render").json()["status"] == "none"
    asked = client.post(f"/api/jobs/{event_id}/render")
    assert asked.status_code == 202 and asked.json()["status"] == "rendering"
    assert outbox(settings, event_id)["render_pending"] is True  # the outbox relay publishes it
    failure = settings.storage_dir / "videos" / annotated_failure_key(event_id)
    failure.parent.mkdir(parents=True, exist_ok=True)
    failure.write_text(
        json.dumps(
            {"event_id": event_id, "error": "the video has no decodable frames", "failed_at": "2026-12-02T10:00:00Z"}
        )
    )
    state = client.get(f"/api/jobs/{event_id}/render").json()
    assert state == {
        "event_id": event_id,
        "status": "failed",
        "error": "the video has no decodable frames",
        "url": None,
    }
    assert client.get(f"/api/result_video/{event_id}").json()["status"] == "ready"  # the job's detections stand
    assert client.post(f"/api/jobs/{event_id}/render").json()["status"] == "rendering" and not failure.exists()
    assert client.get(f"/api/jobs/{event_id}/annotated.mp4").status_code == 404
    (settings.storage_dir / "videos" / annotated_key(event_id)).write_bytes(b"\x00" * 5000)
    part = client.get(f"/api/jobs/{event_id}/annotated.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.headers["content-range"] == "bytes 100-199/5000"
    assert client.get(f"/api/jobs/{event_id}/render").json()["url"] == f"/api/jobs/{event_id}/annotated.mp4"


def test_the_render_worker_draws_a_real_video_and_fails_only_the_rendering(settings, tmp_path) -> None:
    store = DirectoryStore(settings.storage_dir)
    renderer = Renderer(store, None, settings)  # type: ignore[arg-type, unused-ignore]  # nothing is dead-lettered
    video = StorageLocation(bucket="videos", object="input/job.mp4")
    (settings.storage_dir / "videos" / "input").mkdir(parents=True)
    (settings.storage_dir / "videos" / "input" / "job.mp4").write_bytes(bikes_video().read_bytes())
    finish(settings, "job", WALK)
    asyncio.run(renderer.make("job", video))
    made = settings.storage_dir / "videos" / annotated_key("job")
    with av.open(str(made)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and sum(1 for _ in container.decode(stream)) == 250
    asyncio.run(renderer.make("job", video))  # delivered again: made once
    assert renderer.stats.rendered == 1 and renderer.stats.skipped == 1
    (settings.storage_dir / "videos" / "input" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 999)
    finish(settings, "broken", WALK)
    asyncio.run(renderer.make("broken", StorageLocation(bucket="videos", object="input/broken.mp4")))
    failure = json.loads((settings.storage_dir / "videos" / annotated_failure_key("broken")).read_text())
    assert "video" in failure["error"] and renderer.stats.failed == 1
    assert (settings.storage_dir / "videos" / detection_key("broken")).exists()  # the result is untouched
    asyncio.run(renderer.make("deleted", StorageLocation(bucket="videos", object="input/deleted.mp4")))
    assert not list((settings.storage_dir / "videos" / "annotated").glob("deleted*"))  # a deleted job: nothing written
