"""No secret reaches a log line or an answer: services run as real processes with known secrets (the
API key, a MongoDB password as a setting and inside MONGO_URI, storage keys, the webhook secret), on
DEBUG logs; clients make the usual mistakes; two services crash; then every log line and every answer
is searched for each secret."""

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from pymongo import MongoClient

from tests.conftest import RelayProcess, settings_env
from tests.harness import free_port, wait_until

SECRETS = {
    "API_KEY": "key-7d1f0a9c3b5e-SECRET",
    "MONGO_PASSWORD": "mongo+pw/7d1f@0a9c:3b%5e-SECRET",  # every character a URI would need encoded
    "MINIO_ACCESS_KEY": "access-7d1f0a9c3b5e-SECRET",
    "MINIO_SECRET_KEY": "storage-7d1f0a9c3b5e-SECRET",
    "WEBHOOK_SECRET": "webhook-7d1f0a9c3b5e-SECRET",
}
URI_PASSWORD = "uri-password-7d1f0a9c3b5e-SECRET"
WRONG_MONGO_PASSWORD = "wrong-mongo-7d1f0a9c3b5e-SECRET"


def leaks(text: str) -> list[str]:
    values = [*SECRETS.values(), URI_PASSWORD, WRONG_MONGO_PASSWORD]
    forms = {form for value in values for form in (value, quote(value, safe=""), quote_plus(value))}
    return sorted(form for form in forms if form in text)


def answer_text(answer: httpx.Response) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in answer.headers.items())
    return f"{answer.status_code}\n{headers}\n{answer.text}"


def test_no_secret_reaches_a_log_line_or_an_answer(settings, tmp_path: Path) -> None:
    user = f"app-{uuid.uuid4().hex[:8]}"
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(settings.mongo()["host"]) as mongo:
        mongo.admin.command("createUser", user, pwd=SECRETS["MONGO_PASSWORD"], roles=["readWrite"])
    env = {**SECRETS, "MONGO_USERNAME": user, "LOG_LEVEL": "DEBUG", "STORAGE_BACKEND": "dir"}
    port = free_port()
    api = RelayProcess("api", settings, tmp_path / "api.log", API_PORT=str(port), **env)
    url, key = f"http://127.0.0.1:{port}", {"X-API-Key": SECRETS["API_KEY"]}
    answers: list[httpx.Response] = []
    try:
        wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "the API answering")
        job = str(uuid.uuid4())
        with httpx.Client(base_url=url) as client:
            answers += [
                client.post("/api/upload_video", files={"file": ("v.mp4", b"x")}),  # no key
                client.get("/api/status/all", headers={"X-API-Key": "wrong"}),
                client.post("/api/session", json={"api_key": "wrong"}),
                client.post("/api/session", json={"api_key": SECRETS["API_KEY"]}),  # the cookie is no key either
                client.get("/api/status/all", params={"after": "not-a-cursor"}, headers=key),
                client.get("/api/status/all", params={"limit": 0}, headers=key),
                client.get("/api/result_video/not-a-job", headers=key),
                client.get(f"/api/result_video/{job}", headers=key),
                client.get(f"/api/video/{job}", headers=key),
                client.delete(f"/api/jobs/{job}", headers=key),
                client.post("/api/upload_video", files={"file": ("notes.txt", b"not a video")}, headers=key),
                client.post(
                    "/api/upload_video", files={"file": ("v.mp4", b"x")}, data={"bucket": "other"}, headers=key
                ),
                client.post(
                    "/api/upload_video",
                    files={"file": ("v.mp4", b"\0" * 4096)},
                    data={"callback_url": "http://127.0.0.1:9/hook"},
                    headers=key,
                ),  # fmt: skip
                client.post("/api/request", json={"object": "../../etc/passwd"}, headers=key),
                client.get("/api/status/all", headers=key),
            ]
    finally:
        api.stop()
    assert [answer.status_code for answer in answers[:3]] == [401, 401, 401]
    assert answers[-1].status_code == 200 and all(answer.status_code < 500 for answer in answers)

    # two crashes: a relay whose MONGO_URI holds a wrong password, the API with a wrong MONGO_PASSWORD
    wrong_uri = settings.mongo()["host"].replace("mongodb://", f"mongodb://{user}:{URI_PASSWORD}@")
    relay = RelayProcess("outbox-relay", settings, tmp_path / "relay.log", **{**env, "MONGO_URI": wrong_uri,
                         "MONGO_USERNAME": "", "MONGO_PASSWORD": ""})  # fmt: skip
    crashed_api = RelayProcess("api", settings, tmp_path / "crashed-api.log", API_PORT=str(free_port()),
                               **{**env, "MONGO_PASSWORD": WRONG_MONGO_PASSWORD})  # fmt: skip
    assert relay.process.wait(60) == 1
    assert crashed_api.process.wait(60) != 0
    relay_log, crashed_log = relay.log.read_text(), crashed_api.log.read_text()
    assert "service crashed" in relay_log and "Authentication" in relay_log  # the crash and its cause are logged
    assert "Authentication" in crashed_log

    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
    assert len(logs) == 3 and sum(text.count("\n") for text in logs.values()) > 10
    for name, text in logs.items():
        assert not leaks(text), f"{name} holds a secret"
    for answer in answers:
        assert not leaks(answer_text(answer)), f"{answer.request.method} {answer.request.url} answers a secret"
    assert not leaks(str(settings_env(settings)))  # the test helpers hold none
