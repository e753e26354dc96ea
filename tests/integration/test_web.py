"""The web page's sign-in and the video endpoint, against a real API server (uvicorn) on real
SecantusDB and Tansu, driven by Debian's chromium through Playwright."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from api.app import create_app
from tests.conftest import api_client
from tests.harness import free_port, wait_until
from tests.servers import bikes_video

if TYPE_CHECKING:
    from playwright.sync_api import Route

CHROMIUM = "/usr/lib/chromium/chromium"
KEY = "s3cret-web"


@contextlib.contextmanager
def serving(settings) -> Iterator[str]:
    """The API served by uvicorn on a free port, in a thread."""
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def keyed_api(settings) -> Iterator[str]:
    """The API with API_KEY set, at most one upload at a time."""
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY), "max_concurrent_uploads": 1})) as url:
        yield url


def raw_upload(url: str, headers: str, body_sent: bytes = b"") -> socket.socket:
    """Start a 100 MB upload by hand: its headers, then only `body_sent` of its body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /api/upload_video HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Type: multipart/form-data;"
                 f" boundary=b\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n".encode() + body_sent)  # fmt: skip
    return sock


def test_without_the_key_a_100_mb_upload_is_refused_before_its_body_is_read(keyed_api: str) -> None:
    with raw_upload(keyed_api, "") as sock:  # not one byte of the body sent
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401") and b"X-API-Key" in answer
    for path in ("/api/status/all", f"/api/jobs/{'0' * 8}-0000-4000-8000-{'0' * 12}/events", "/api/jobs/events"):
        assert httpx.get(f"{keyed_api}{path}").status_code == 401, path  # reads need the key too
    assert httpx.get(f"{keyed_api}/api/health").status_code == 200
    assert httpx.get(f"{keyed_api}/api/status/all", headers={"X-API-Key": KEY}).status_code == 200


def test_uploads_beyond_the_concurrency_limit_get_503_with_retry_after(keyed_api: str) -> None:
    def upload() -> httpx.Response:
        return httpx.post(f"{keyed_api}/api/upload_video", headers={"X-API-Key": KEY},
                          files={"file": ("v.mp4", bikes_video().read_bytes())})  # fmt: skip

    with raw_upload(keyed_api, f"X-API-Key: {KEY}\r\n", b"--b\r\n") as slow:  # streaming in, slowly
        second = wait_until(lambda: (answer := upload()).status_code == 503 and answer, 10, "the slot taken")
        assert second.headers["retry-after"] == "5" and "too many uploads" in second.json()["detail"]
        slow.close()
    third = wait_until(lambda: (answer := upload()).status_code != 503 and answer, 10, "a free slot")
    assert third.status_code == 200


def browser():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def test_the_page_asks_for_the_key_once_and_keeps_it_in_an_http_only_cookie(keyed_api: str) -> None:
    playwright, chromium = browser()
    try:
        page = chromium.new_page()
        page.goto(f"{keyed_api}/")
        page.wait_for_selector("#key-dialog[open]")  # the job list was refused: the page asks for the key
        page.fill("#key", "wrong")
        page.click("#key-form button")
        page.wait_for_function("() => document.querySelector('#key-error').textContent !== ''")
        page.fill("#key", KEY)
        page.click("#key-form button")
        page.set_input_files("#file", str(bikes_video()))
        page.wait_for_function("() => document.querySelector('.upload .state').textContent === 'queued'")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts never see it
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
        page.wait_for_function("() => document.querySelector('#job-rows tr') !== null")
        page.set_input_files("#file", str(bikes_video()))  # asked once: the second upload just goes
        both_queued = "() => { const states = [...document.querySelectorAll('.upload .state')];" \
                      " return states.length === 2 && states.every(s => s.textContent === 'queued'); }"  # fmt: skip
        page.wait_for_function(both_queued)
        assert not page.is_visible("#key-dialog")
        assert page.locator("#job-rows tr").count() == 2
    finally:
        chromium.close()
        playwright.stop()
    assert httpx.post(f"{keyed_api}/api/session", headers={"X-API-Key": "wrong"}).status_code == 401


def test_an_upload_refused_just_before_the_key_was_accepted_is_sent_again_not_asked_for(keyed_api: str) -> None:
    """An upload started while the key is being given is refused (no session yet); its answer arrives once
    the sign-in has succeeded: the page sends it again with the session, it does not ask for the key."""
    playwright, chromium = browser()
    held: list[Route] = []  # the first upload's request, answered by the test
    try:
        page = chromium.new_page()
        page.route("**/api/upload_video", lambda route: route.continue_() if held else held.append(route))
        page.goto(f"{keyed_api}/")
        page.wait_for_selector("#key-dialog[open]")
        page.set_input_files("#file", str(bikes_video()))  # sent without a session: held here
        page.wait_for_function("() => document.querySelector('.upload .state') !== null")
        wait_until(lambda: page.evaluate("1") and held, 10, "the upload sent")
        page.fill("#key", KEY)
        page.click("#key-form button")
        page.wait_for_selector("#key-dialog", state="hidden")  # signed in
        held[0].fulfill(status=401, content_type="application/json", body='{"detail": "missing or wrong X-API-Key"}')
        page.wait_for_function("() => document.querySelector('.upload .state').textContent === 'queued'",
                               timeout=15000)  # fmt: skip
        assert not page.is_visible("#key-dialog")
    finally:
        chromium.close()
        playwright.stop()


def test_the_video_is_served_with_byte_ranges(settings) -> None:
    with api_client(settings) as client:
        event_id = client.post("/api/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())}).json()[
            "event_id"
        ]
        original = bikes_video().read_bytes()
        whole = client.get(f"/api/video/{event_id}")
        assert whole.status_code == 200 and whole.content == original and whole.headers["accept-ranges"] == "bytes"
        part = client.get(f"/api/video/{event_id}", headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == original[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{len(original)}"
        tail = client.get(f"/api/video/{event_id}", headers={"Range": "bytes=-500"})
        assert tail.status_code == 206 and tail.content == original[-500:]
        outside = client.get(f"/api/video/{event_id}", headers={"Range": f"bytes={len(original)}-"})
        assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{len(original)}"
        assert client.get(f"/api/video/{'0' * 8}-0000-4000-8000-{'0' * 12}").status_code == 404
