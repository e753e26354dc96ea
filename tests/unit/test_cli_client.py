"""The command-line client's own behaviour where the server says "come back later" (a fake transport)."""

import io

import httpx
from rich.console import Console

from vdetect.client import Api


def test_an_upload_refused_for_a_full_queue_waits_as_told_and_is_sent_again(tmp_path, monkeypatch) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    answers = [
        httpx.Response(429, json={"detail": "this client has 100 jobs waiting"}, headers={"Retry-After": "30"}),
        httpx.Response(503, json={"detail": "the database is unreachable"}, headers={"Retry-After": "5"}),
        httpx.Response(200, json={"status": "ok", "event_id": "e1"}),
    ]
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return answers.pop(0)

    slept: list[float] = []
    monkeypatch.setattr("vdetect.client.time.sleep", slept.append)
    api = Api("http://vdetect.invalid", None)
    api.http = httpx.Client(base_url="http://vdetect.invalid/api", transport=httpx.MockTransport(answer))
    said = io.StringIO()
    assert api.upload(video, Console(file=said)) == "e1"
    assert slept == [30, 5] and len({len(body) for body in bodies}) == 1  # the whole file each time
    assert "100 jobs waiting; sending it again in 30 s" in said.getvalue()
