"""What one client sends costs at most its own request: oversized bodies, idle and dripping uploads,
floods of jobs and event streams, cross-origin writes with the session cookie, malformed parameters.
Against a real API (uvicorn, or Starlette's test client) on real SecantusDB."""

import base64
import select
import socket
import time
import uuid

import httpx
import pytest
from pydantic import SecretStr
from pymongo import MongoClient

from events.contracts import OUTBOX, OutboxDocument, OutboxPayload
from tests.conftest import api_client
from tests.harness import wait_until
from tests.integration.test_api import upload
from tests.integration.test_web import raw_upload, serving
from tests.servers import bikes_video

KEY = "s3cret-hostile"


def answer_of(sock: socket.socket, wait_s: float, whole: bool = False) -> bytes:
    """What the server answered on a raw connection within `wait_s` (b"" if nothing): its first bytes,
    or with `whole` all it sent until it closed the connection."""
    sock.settimeout(wait_s)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            if not whole:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def test_a_400_mb_json_body_is_refused_before_it_is_read_declared_or_chunked(settings) -> None:
    with serving(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:  # declared: 413 without a byte read
            sock.sendall(b"POST /api/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 419430400\r\n\r\n")  # fmt: skip
            answer = answer_of(sock, 5, whole=True)
        assert answer.startswith(b"HTTP/1.1 413") and b"limit of 1048576 bytes" in answer
        with socket.create_connection((host, int(port))) as sock:  # chunked: refused once 1 MiB came
            sock.sendall(b"POST /api/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            chunk, sent, answer = b"10000\r\n" + b" " * 0x10000 + b"\r\n", 0, b""
            while sent < 400 * 1024 * 1024 and not answer:
                try:
                    sock.sendall(chunk)
                except OSError:  # the server closed the connection after its answer
                    break
                sent += 0x10000
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(4096)
            answer = answer or answer_of(sock, 5)
        assert answer.startswith(b"HTTP/1.1 413")
        assert sent < 16 * 1024 * 1024, f"{sent} bytes were taken before the 413"


def test_uploads_that_go_quiet_get_408_and_give_their_slots_back(settings) -> None:
    # quiet for 3 s: a window in which a busy machine still sees both slots taken
    quiet = settings.model_copy(update={"max_concurrent_uploads": 2, "upload_idle_timeout_s": 3})
    with serving(quiet) as url:
        started = time.monotonic()
        idle = [raw_upload(url, "", b"--b\r\n" + b"x" * 95) for _ in range(2)]  # headers and 100 bytes, then quiet

        def upload_answer() -> httpx.Response:
            return httpx.post(f"{url}/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())})

        assert wait_until(lambda: upload_answer().status_code == 503, 5, "both slots taken")
        answers = [answer_of(sock, 10, whole=True) for sock in idle]
        waited = time.monotonic() - started
        for sock in idle:
            sock.close()
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers
        assert b"stopped for 3 s" in answers[0] and waited < 10
        assert wait_until(lambda: (answer := upload_answer()).status_code == 200 and answer, 10, "a free slot")


def test_a_client_cannot_queue_more_jobs_than_its_share_or_the_servers(settings) -> None:
    limited = settings.model_copy(update={"max_waiting_jobs_per_client": 3, "max_waiting_jobs": 5})
    ended = {"$set": {"status": "ready"}}
    with api_client(limited) as client, MongoClient(**settings.mongo()) as sync:
        outbox = sync[settings.main_db][OUTBOX]
        first = [upload(client) for _ in range(3)]
        assert {answer["code"] for answer in first} == {200}
        refused = client.post("/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "this client has 3 jobs waiting or in progress" in refused.json()["detail"]
        again = client.post("/api/request", json={"object": f"input/{first[0]['event_id']}.mp4"})  # one object, again
        assert again.status_code == 429
        outbox.update_one({"_id": first[0]["event_id"]}, ended)  # one job ended: room again for this client
        assert upload(client)["code"] == 200
        for _ in range(3):  # another client's jobs fill the server's share (2 + 3)
            other = OutboxDocument(id=str(uuid.uuid4()), payload=OutboxPayload(bucket="videos", object="x.mp4"),
                                   client="192.0.2.7")  # fmt: skip
            outbox.insert_one(other.to_mongo())
        outbox.update_one({"_id": first[1]["event_id"]}, ended)
        full = client.post("/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())})
        assert full.status_code == 429 and "the server has 5 jobs" in full.json()["detail"]
    assert len(list(settings.storage_dir.rglob("*.mp4"))) == 4  # nothing stored for the refused ones


def test_event_streams_are_capped_per_client_and_in_all(settings) -> None:
    capped = settings.model_copy(update={"max_event_streams_per_client": 2, "max_event_streams": 3})
    with serving(capped) as url:
        host, port = url.removeprefix("http://").split(":")
        streams = []
        for _ in range(2):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /api/jobs/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer_of(sock, 5).startswith(b"HTTP/1.1 200")
            streams.append(sock)
        third = httpx.get(f"{url}/api/jobs/events", timeout=5)
        assert third.status_code == 429 and third.headers["retry-after"] == "10"
        assert "this client has 2 live update streams open" in third.json()["detail"]
        streams.pop().close()
        assert wait_until(lambda: stream_opens(url), 10, "a stream closed gives its place back")
        for sock in streams:
            sock.close()


def stream_opens(url: str) -> bool:
    with httpx.stream("GET", f"{url}/api/jobs/events", timeout=5) as response:
        return response.status_code == 200


def test_the_session_cookie_writes_only_from_the_servers_own_page_and_expires_and_is_revoked(settings) -> None:
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY), "session_ttl_s": 2})
    with serving(keyed) as url:
        signed_in = httpx.post(f"{url}/api/session", headers={"X-API-Key": KEY})
        cookie = signed_in.cookies["vdetect_session"]
        assert signed_in.status_code == 204 and KEY not in cookie and "Max-Age=2" in signed_in.headers["set-cookie"]
        jar = {"vdetect_session": cookie}
        own = url.removeprefix("http://")
        video = {"file": ("v.mp4", bikes_video().read_bytes())}

        def post(headers: dict[str, str]) -> httpx.Response:
            return httpx.post(f"{url}/api/upload_video", files=video, cookies=jar, headers=headers)

        other_port = post({"Origin": f"http://{own.split(':')[0]}:9999"})  # same site, another origin
        assert other_port.status_code == 403 and "own page" in other_port.json()["detail"]
        assert post({"Sec-Fetch-Site": "same-site"}).status_code == 403
        assert post({}).status_code == 403  # no word from a browser where the write came from
        assert post({"Origin": f"http://{own}"}).status_code == 200
        assert post({"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert httpx.get(f"{url}/api/status/all", cookies=jar).status_code == 200  # reads need no Origin
        assert wait_until(lambda: httpx.get(f"{url}/api/status/all", cookies=jar).status_code == 401, 10,
                          "the session expired")  # fmt: skip
        second = httpx.post(f"{url}/api/session", headers={"X-API-Key": KEY}).cookies["vdetect_session"]
        third = httpx.post(f"{url}/api/session", headers={"X-API-Key": KEY}).cookies["vdetect_session"]
        signed_out = httpx.delete(f"{url}/api/session", cookies={"vdetect_session": second},
                                  headers={"Sec-Fetch-Site": "same-origin"})  # fmt: skip
        assert signed_out.status_code == 204 and 'vdetect_session=""' in signed_out.headers["set-cookie"]
        assert httpx.get(f"{url}/api/status/all", cookies={"vdetect_session": second}).status_code == 401
        assert httpx.get(f"{url}/api/status/all", cookies={"vdetect_session": third}).status_code == 200
        assert httpx.delete(f"{url}/api/session?all=true", headers={"X-API-Key": KEY}).status_code == 204
        assert httpx.get(f"{url}/api/status/all", cookies={"vdetect_session": third}).status_code == 401
        behind_tls = httpx.post(f"{url}/api/session", headers={"X-API-Key": KEY, "X-Forwarded-Proto": "https"})
        assert "secure" in behind_tls.headers["set-cookie"].lower()


MALFORMED = [  # (what, request, code, words of the answer): every parameter a client can get wrong
    ("callback-unclosed-ipv6", lambda c: upload(c, callback_url="http://[::1"), 400, "not a valid URL"),
    ("callback-control-char", lambda c: upload(c, callback_url="http://example.com/\x07"), 400, "control"),
    ("callback-too-long", lambda c: upload(c, callback_url="https://example.com/" + "a" * 3000), 422, ""),
    ("key-part-too-long", lambda c: c.post("/api/request", json={"object": "a" * 300}), 400, "255 between"),
    ("key-too-long", lambda c: c.post("/api/request", json={"object": "a/" * 600 + "b"}), 422, "at most 1024"),
    ("key-not-a-string", lambda c: c.post("/api/request", json={"object": 7}), 422, ""),
    ("request-not-json", lambda c: c.post("/api/request", content=b"{", headers={"content-type": "application/json"}),
     422, ""),
    ("bucket-not-a-name", lambda c: c.post("/api/request", json={"object": "a.mp4", "bucket": "../x"}), 400, "bucket"),
    ("cursor-nested", lambda c: c.get("/api/status/all", params={
        "after": base64.urlsafe_b64encode(b"[" * 3000).decode()}), 422, "at most 256 characters"),
    ("cursor-long", lambda c: c.get("/api/status/all", params={"after": "A" * 5000}), 422, "at most 256 characters"),
    ("cursor-not-ours", lambda c: c.get("/api/status/all", params={"after": "W1tbW1tbW1tb"}), 400, "cursor"),
    ("cursor-empty", lambda c: c.get("/api/status/all", params={"after": ""}), 422, "at least 1 character"),
    ("limit-not-a-number", lambda c: c.get("/api/status/all", params={"limit": "x"}), 422, ""),
    ("status-unknown", lambda c: c.get("/api/status/all", params={"status": "lost"}), 422, ""),
    ("event-id", lambda c: c.get("/api/jobs/not-a-uuid/events"), 422, "UUID"),
    ("video-id", lambda c: c.get("/api/video/" + "x" * 300), 422, "UUID"),
    ("delete-id", lambda c: c.delete("/api/jobs/%00"), 422, "UUID"),
    ("sign-out-all-flag", lambda c: c.delete("/api/session", params={"all": "maybe"}), 422, ""),
]  # fmt: skip


@pytest.mark.parametrize(("send", "code", "words"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_a_malformed_parameter_is_a_4xx_with_a_reason_never_a_500(settings, send, code, words) -> None:
    hooked = settings.model_copy(update={"webhook_secret": SecretStr("whsec"), "webhook_allow_private": True})
    with api_client(hooked, raise_server_exceptions=False) as client:
        answer = send(client)
        status = answer["code"] if isinstance(answer, dict) else answer.status_code
        detail = answer["detail"] if isinstance(answer, dict) else answer.json()["detail"]
        assert status == code and words in str(detail), (status, detail)
        assert client.get("/api/status/all").json()["total"] == 0
