"""The API against real SecantusDB and a storage folder, through HTTP requests to the ASGI app."""

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from events import detection_file, topics
from events.clients import ensure_topics, kafka_producer
from events.contracts import (
    DetectedObject,
    DetectionFile,
    FramePrediction,
    JobEvent,
    JobEventType,
    detection_key,
    utcnow,
)
from relays.follow import job_event_publisher
from tests.conftest import api_client
from tests.harness import wait_until
from tests.servers import bikes_video


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with api_client(settings.model_copy(update={"allowed_buckets": "videos,clips"})) as test_client:
        yield test_client


def upload(client: TestClient, content: bytes | None = None, **form) -> dict:
    data = content if content is not None else bikes_video().read_bytes()
    response = client.post("/api/upload_video", files={"file": ("video.mp4", data, "video/mp4")}, data=form)
    return {"code": response.status_code, **response.json()}


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/health"])
def test_health(client: TestClient, path: str) -> None:
    assert client.get(path).json() == {"status": "ok", "service": "api", "down": []}


def test_health_names_the_local_stacks_services_that_are_down_and_why(settings, tmp_path) -> None:
    status = tmp_path / "stack-status.json"
    reason = "exit code 1: cannot listen on 127.0.0.1:8004"
    services = {"runner": {"state": "running", "restarts": 0, "reason": None},
                "outbox-relay": {"state": "failing", "restarts": 3, "reason": reason}}  # fmt: skip
    status.write_text(json.dumps({"updated_at": utcnow().isoformat(), "services": services}))
    with api_client(settings.model_copy(update={"stack_status_file": status})) as api:
        answer = api.get("/api/health").json()
        down = [{"name": "outbox-relay", "state": "failing", "restarts": 3, "reason": reason}]
        assert answer == {"status": "degraded", "service": "api", "down": down}
        services["outbox-relay"]["state"] = "running"
        status.write_text(json.dumps({"updated_at": utcnow().isoformat(), "services": services}))
        assert api.get("/api/health").json() == {"status": "ok", "service": "api", "down": []}
    services["outbox-relay"]["state"] = "failing"
    status.write_text(json.dumps({"updated_at": utcnow().isoformat(), "services": services}))
    keyed_settings = settings.model_copy(update={"stack_status_file": status, "api_key": SecretStr("k3y")})
    with api_client(keyed_settings) as keyed:  # health answers anyone; reasons only with the key
        assert keyed.get("/api/health").json()["down"] == [{**down[0], "reason": None}]
        assert keyed.get("/api/health", headers={"X-API-Key": "k3y"}).json()["down"] == down


def test_a_job_keeps_the_uploads_file_name_sanitised(client: TestClient) -> None:
    data = bikes_video().read_bytes()
    name = "C:\\clips\\street  cam\u202e 01.mp4"  # a Windows path, a bidi override (httpx escapes controls)
    answer = client.post("/api/upload_video", files={"file": (name, data, "video/mp4")}).json()
    (operation,) = client.get("/api/status/all").json()["operations"]
    assert operation["file_name"] == "street cam 01.mp4"
    assert client.get(f"/api/result_video/{answer['event_id']}").json()["file_name"] == "street cam 01.mp4"
    long = client.post("/api/upload_video", files={"file": ("v" * 900 + ".mp4", data, "video/mp4")}).json()
    shown = client.get(f"/api/result_video/{long['event_id']}").json()["file_name"]
    assert len(shown) == 120 and shown.endswith("v.mp4")
    requested = client.post("/api/request", json={"object": f"input/{answer['event_id']}.mp4"}).json()
    assert client.get(f"/api/result_video/{requested['event_id']}").json()["file_name"] == f"{answer['event_id']}.mp4"


def test_upload_stores_the_video_and_writes_a_new_outbox_event(client: TestClient, settings) -> None:
    answer = upload(client)
    assert answer["code"] == 200 and answer["status"] == "ok"
    event_id = answer["event_id"]
    assert uuid.UUID(event_id).version == 4
    stored = settings.storage_dir / "videos" / "input" / f"{event_id}.mp4"
    assert stored.read_bytes() == bikes_video().read_bytes()
    result = client.get(f"/api/result_video/{event_id}").json()
    assert result["status"] == "new" and result["event_id"] == event_id
    assert result["processing_time_seconds"] >= 0 and result["processing_time_formatted"].endswith("s")
    operations = client.get("/api/status/all").json()
    assert operations["total"] == 1
    assert operations["operations"][0]["video_id"] == event_id
    assert operations["operations"][0]["status_code"] == "new"


def test_readiness_comes_from_storage(client: TestClient, settings) -> None:
    event_id = upload(client, bucket="clips")["event_id"]
    result = DetectionFile(
        event_id=event_id,
        total_frames=1,
        prediction=[FramePrediction(frame=0, objects=[DetectedObject(class_name="car", box=[1, 2, 3, 4], conf=0.9)])],
        created_at=utcnow(),
        completed_at=utcnow(),
    )
    target = settings.storage_dir / "clips" / detection_key(event_id)
    target.parent.mkdir(parents=True)
    target.write_bytes(result.to_bytes())
    answer = client.get(f"/api/result_video/{event_id}").json()
    assert set(answer) == {"status", "event_id", "prediction", "processing_time_seconds", "processing_time_formatted"}
    assert answer["status"] == "ready"
    assert answer["prediction"] == [{"frame": 0, "objects": [{"class": "car", "box": [1, 2, 3, 4], "conf": 0.9}]}]
    (operation,) = client.get("/api/status/all").json()["operations"]
    assert operation["status_code"] == "ready"


def test_a_ready_result_passes_the_stored_file_through_with_an_etag_and_304(client: TestClient, settings) -> None:
    """The relay's layout (`prediction` last) is streamed from storage as it is: the same answer as parsing
    it, and a result that never changes is cached by tag."""
    event_id = upload(client)["event_id"]
    frames = [{"frame": 5 * i, "objects": [{"class": "car", "box": [1.5, 2, 3, 4.25], "conf": 0.9}] * (i % 3)}
              for i in range(2000)]  # fmt: skip
    target = settings.storage_dir / "videos" / detection_key(event_id)
    target.parent.mkdir(parents=True)

    async def frame_docs():
        for frame in frames:
            yield frame

    with target.open("wb") as out:
        asyncio.run(detection_file.write(out, {"event_id": event_id, "fps": 25.0, "total_frames": 2000},
                                         frame_docs()))  # fmt: skip
    answer = client.get(f"/api/result_video/{event_id}")
    body = answer.json()
    assert body["status"] == "ready" and body["fps"] == 25.0 and body["prediction"] == frames
    assert set(body) == {"status", "event_id", "fps", "prediction", "processing_time_seconds",
                         "processing_time_formatted"}  # fmt: skip
    tag = answer.headers["etag"]
    assert answer.headers["cache-control"] == "public, max-age=86400"
    cached = client.get(f"/api/result_video/{event_id}", headers={"If-None-Match": tag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == tag
    other = client.get(f"/api/result_video/{event_id}", headers={"If-None-Match": '"another"'})
    assert other.status_code == 200 and other.json() == body
    assert detection_file.split(target.read_bytes()[:1000]) == (
        {"event_id": event_id, "fps": 25.0, "total_frames": 2000},
        target.read_bytes().index(b"[") + 1,
    )


def test_event_ids_must_be_uuids(client: TestClient) -> None:
    """Moved from the unit tests onto the real path: the route's id is a UUID, in any case, stored lower."""
    answer = client.get("/api/result_video/B365CD4D-8336-419D-A390-0AD166EAECA5")
    assert answer.status_code == 404 and "b365cd4d-8336-419d-a390-0ad166eaeca5" in answer.json()["detail"]
    refused = client.get("/api/result_video/nope")
    assert refused.status_code == 422


def test_request_enqueues_a_video_already_in_storage(client: TestClient, settings) -> None:
    source = upload(client)["event_id"]
    answer = client.post("/api/request", json={"bucket": "videos", "object": f"input/{source}.mp4"})
    assert answer.status_code == 200
    event_id = answer.json()["event_id"]
    assert event_id != source
    assert client.get(f"/api/result_video/{event_id}").json()["status"] == "new"


@pytest.mark.parametrize(
    ("send", "code", "message"),
    [
        (lambda c: upload(c, content=b""), 400, "empty"),
        (lambda c: upload(c, content=b"%PDF-1.7 not a video at all"), 415, "not a video"),
        (lambda c: upload(c, bucket="Bad_Bucket"), 400, "bucket"),
        (lambda c: upload(c, bucket="other"), 403, "not allowed on this server"),
        (lambda c: c.get("/api/result_video/not-a-uuid"), 422, "UUID"),
        (lambda c: c.get(f"/api/result_video/{uuid.uuid4()}"), 404, "no job"),
        (lambda c: c.post("/api/request", json={"object": "input/missing.mp4"}), 404, "does not exist"),
        (lambda c: c.post("/api/request", json={"object": "../../etc/passwd"}), 400, "invalid object key"),
        (lambda c: c.post("/api/upload_video", data={"bucket": "videos"}), 422, "file"),
    ],
    ids=[
        "empty",
        "not-video",
        "bad-bucket",
        "other-bucket",
        "bad-id",
        "unknown-id",
        "missing-object",
        "bad-key",
        "no-file",
    ],
)
def test_bad_input_gets_a_clear_4xx_and_leaves_nothing(client: TestClient, settings, send, code, message) -> None:
    response = send(client)
    status = response["code"] if isinstance(response, dict) else response.status_code
    body = response if isinstance(response, dict) else response.json()
    assert status == code
    assert message in str(body["detail"])
    assert client.get("/api/status/all").json()["total"] == 0
    assert not list(settings.storage_dir.rglob("*.mp4"))
    assert sorted(p.name for p in settings.storage_dir.iterdir()) == ["clips", "videos"]  # no bucket created


def test_cleanup_removes_jobs_and_objects_the_system_knows_and_nothing_else(client: TestClient, settings) -> None:
    ids = [upload(client)["event_id"] for _ in range(3)]
    foreign = settings.storage_dir / "videos" / "mine" / "keep.mp4"  # a client's own object, requested
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(bikes_video().read_bytes())
    stray = settings.storage_dir / "videos" / "input" / "not-a-job.mp4"  # no job knows it
    stray.write_bytes(b"x")
    requested = client.post("/api/request", json={"object": "mine/keep.mp4"}).json()["event_id"]
    assert client.delete(f"/api/jobs/{ids[0]}").json() == {"status": "ok", "jobs_deleted": 1, "objects_deleted": 1}
    assert client.get(f"/api/result_video/{ids[0]}").status_code == 404
    assert client.delete(f"/api/jobs/{ids[0]}").status_code == 404
    answer = client.delete("/api/cleanup/all").json()
    assert answer == {"status": "ok", "jobs_deleted": 3, "objects_deleted": 2}
    assert client.get("/api/status/all").json() == {"operations": [], "total": 0, "next": None}
    assert client.get(f"/api/result_video/{requested}").status_code == 404
    assert sorted(settings.storage_dir.rglob("*.mp4")) == sorted([foreign, stray])  # only what jobs wrote went


@pytest.fixture
def strict_client(settings) -> Iterator[TestClient]:
    """An API with every limit switched on: small uploads, one bucket, an API key."""
    strict = settings.model_copy(
        update={"max_upload_bytes": 300_000, "allowed_buckets": "videos", "api_key": SecretStr("s3cret")}
    )
    with api_client(strict) as test_client:
        yield test_client


KEY = {"X-API-Key": "s3cret"}


@pytest.mark.parametrize(
    ("send", "code", "message"),
    [
        (lambda c: c.post("/api/upload_video", files={"file": ("v.mp4", b"x")}), 401, "X-API-Key"),
        (
            lambda c: c.post("/api/upload_video", files={"file": ("v.mp4", b"x")}, headers={"X-API-Key": "no"}),
            401,
            "X-API-Key",
        ),
        (lambda c: c.delete("/api/cleanup/all"), 401, "X-API-Key"),
        (lambda c: c.post("/api/request", json={"object": "input/a.mp4"}), 401, "X-API-Key"),
        (
            lambda c: c.post(
                "/api/upload_video",
                files={"file": ("v.mp4", b"\x00\x00\x00\x18ftyp")},
                data={"bucket": "other"},
                headers=KEY,
            ),
            403,
            "not allowed",
        ),
        (
            lambda c: c.post("/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())}, headers=KEY),
            413,
            "larger than",
        ),
        (
            lambda c: c.post(
                "/api/upload_video",
                content=b"x" * 500_000,
                headers={**KEY, "content-type": "multipart/form-data; boundary=b"},
            ),
            413,
            "larger than",
        ),
    ],
    ids=[
        "no-key",
        "wrong-key",
        "cleanup-no-key",
        "request-no-key",
        "bucket-not-allowed",
        "too-large",
        "too-large-declared",
    ],
)
def test_limits_are_enforced(strict_client: TestClient, settings, send, code, message) -> None:
    response = send(strict_client)
    assert response.status_code == code
    assert message in response.json()["detail"]
    assert strict_client.get("/api/status/all", headers=KEY).json()["total"] == 0
    assert not list(settings.storage_dir.rglob("*.mp4"))


def test_every_api_path_but_health_needs_the_key_and_a_valid_key_lets_an_upload_through(strict_client) -> None:
    assert strict_client.get("/api/status/all").status_code == 401
    assert strict_client.get("/api/health").status_code == 200
    assert strict_client.get("/api/status/all", headers=KEY).status_code == 200
    assert strict_client.get("/api/status/all", headers={"X-API-Key": ""}).status_code == 401
    small = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1000
    response = strict_client.post("/api/upload_video", files={"file": ("v.mp4", small)}, headers=KEY)
    assert response.status_code == 200


def publish(settings, *events: JobEvent) -> None:
    """Put job events on the real topic, as the relays do; the API's projector folds them in."""

    async def send() -> None:
        await ensure_topics(settings)
        async with kafka_producer(settings) as producer:
            for event in events:
                await job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))(event)

    asyncio.run(send())


def answer_when(client: TestClient, event_id: str, check, timeout: float = 30) -> dict:
    return wait_until(lambda: check(answer := client.get(f"/api/result_video/{event_id}").json()) and answer,
                      timeout, f"the answer of {event_id}")  # fmt: skip


def test_a_failed_job_shows_its_reason_from_its_events(client: TestClient, settings) -> None:
    event_id = upload(client)["event_id"]
    publish(settings, JobEvent(event_id=event_id, type=JobEventType.FAILED, error="the video has no decodable frames"))
    answer = answer_when(client, event_id, lambda a: a["status"] == "failed")
    assert answer["error"] == "the video has no decodable frames" and answer["eta_seconds"] is None
    (operation,) = client.get("/api/status/all").json()["operations"]
    assert operation["status_code"] == "failed" and operation["error"] == "the video has no decodable frames"


def test_progress_comes_from_job_events_and_ready_only_from_storage(client: TestClient, settings) -> None:
    event_id = upload(client)["event_id"]
    publish(
        settings,
        JobEvent(event_id=event_id, type=JobEventType.SENT),
        JobEvent(event_id=event_id, type=JobEventType.STARTED, frames_total=10, frames_done=0),
        JobEvent(event_id=event_id, type=JobEventType.PROGRESS, frames_total=10, frames_done=4),
    )
    answer = answer_when(client, event_id, lambda a: a["frames_done"] == 4)
    assert answer["status"] == "sent" and answer["frames_total"] == 10 and answer["progress"] == 0.4
    assert answer["eta_seconds"] is not None and answer["eta_seconds"] >= 0
    (operation,) = client.get("/api/status/all").json()["operations"]
    assert (operation["status_code"], operation["progress"], operation["frames_total"]) == ("sent", 0.4, 10)
    # a `ready` event whose file is missing does not make the job ready: storage is the truth
    publish(settings, JobEvent(event_id=event_id, type=JobEventType.READY, frames_total=10, frames_done=10))
    answer = answer_when(client, event_id, lambda a: a["status"] != "sent")
    assert answer["status"] == "failed" and "no longer in storage" in answer["error"]


def test_status_all_pages_through_every_job_in_order(client: TestClient, settings) -> None:
    ids = [upload(client, content=b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)["event_id"] for _ in range(5)]
    everything = client.get("/api/status/all").json()
    assert [o["video_id"] for o in everything["operations"]] == ids and everything["next"] is None
    seen, after = [], None
    while True:
        page = client.get("/api/status/all", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert len(page["operations"]) <= 2 and page["total"] == len(page["operations"])
        seen += [o["video_id"] for o in page["operations"]]
        if (after := page["next"]) is None:
            break
    assert seen == ids
    assert client.get("/api/status/all", params={"status": "new"}).json()["total"] == 5
    assert client.get("/api/status/all", params={"status": "ready"}).json()["operations"] == []
    for bad, code in (({"after": "garbage"}, 400), ({"limit": 0}, 422), ({"limit": 1001}, 422),
                      ({"status": "lost"}, 422)):  # fmt: skip
        assert client.get("/api/status/all", params=bad).status_code == code


REFUSED_CALLBACKS = [
    ("ftp://93.184.215.14/hook", "http or https"),
    ("http://127.0.0.1:9/hook", "private"),
    ("http://10.1.2.3/hook", "private"),
    ("http://[::1]/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "private"),  # cloud metadata: link-local
    ("http://user:pw@93.184.215.14/hook", "credentials"),
    (f"https://{'a' * 64}.example/hook", "cannot be resolved"),  # a label longer than DNS allows
    ("http://100.64.0.1/hook", "not public"),  # carrier-grade NAT (a cloud's metadata service lives there)
    ("http://[fec0::1]/hook", "not public"),  # site-local
    ("http://192.0.0.8/hook", "not public"),  # IETF protocol assignments
    ("http://[2002:7f00:1::]/hook", "not public"),  # 6to4 of 127.0.0.1
    ("http://[64:ff9b::a00:1]/hook", "not public"),  # NAT64 of 10.0.0.1
    ("http://[::ffff:127.0.0.1]/hook", "not public"),  # IPv4-mapped loopback
    ("http://example.com/\x07", "control characters"),
    ("http://[::1", "not a valid URL"),
]


def test_callback_urls_into_private_networks_are_refused(settings) -> None:
    hooked = settings.model_copy(update={"webhook_secret": SecretStr("whsec")})
    with api_client(hooked) as client:
        for url, message in REFUSED_CALLBACKS:
            answer = upload(client, callback_url=url)
            assert answer["code"] == 400 and message in answer["detail"], url
            response = client.post("/api/request", json={"object": "input/x.mp4", "callback_url": url})
            assert response.status_code == 400 and message in response.json()["detail"], url
        assert upload(client, callback_url="https://93.184.215.14/hook")["code"] == 200  # a public address
        assert client.get("/api/status/all").json()["total"] == 1  # the refused ones left nothing
    assert upload_without_secret(settings)["code"] == 400


def upload_without_secret(settings) -> dict:
    with api_client(settings) as client:
        answer = upload(client, callback_url="https://93.184.215.14/hook")
    assert "WEBHOOK_SECRET" in answer["detail"]
    return answer


def test_the_page_is_served_with_a_strict_content_security_policy_and_no_cors(client: TestClient, settings) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text and "<script>" not in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert client.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/api/upload_video", headers=preflight).headers
    allowed = settings.model_copy(update={"cors_origins": "https://app.example"})
    with api_client(allowed) as cors_client:
        answer = cors_client.options("/api/upload_video", headers={**preflight, "Origin": "https://app.example"})
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        other = cors_client.options("/api/upload_video", headers=preflight)
        assert "access-control-allow-origin" not in other.headers
