"""Replay the red-team pass against a local stack (`vdetect up` on free ports, its defaults) and print
what each attack costs now: the answer, how long it took, the peak memory of the service it aimed at.

    python scripts/red_team.py            # about two minutes; one JSON line per attack, then a summary

Each attack's tests are in docs/security.md's table; this script gives the figures."""

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402
from tests.harness import Stack, local_stack, upload, wait_finished, webhook_receiver  # noqa: E402
from tests.servers import bikes_video  # noqa: E402

SECRET = "whsec-red-team"


def peak_mb(pid: int) -> int:
    found = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(found[1]) // 1024 if found else -1


def report(row: int, attack: str, **figures: Any) -> None:
    print(json.dumps({"row": row, "attack": attack, **figures}), flush=True)


def crafted_videos(stack: Stack, work: Path) -> None:
    runner = stack.pid("runner")
    files: dict[int, tuple[str, Callable[[], bytes]]] = {
        1: ("two_programs.ts", hostile.two_programs_ts),
        2: ("80_million_frames.mp4", hostile.frame_bomb),
        3: ("10_million_frames.mp4", lambda: hostile.frame_bomb(frames=10_000_000)),
        4: ("8200x1000_declared_64x48.mp4", lambda: hostile.larger_than_declared(8200, 1000)),
    }
    for name, make in files.values():
        (work / name).write_bytes(make())
    big = work / "16000x16000_declared_64x48.mp4"  # made in a process of its own: 768 MB of pixels
    subprocess.run([sys.executable, "-c", f"from tests import hostile; open({str(big)!r}, 'wb')"
                    ".write(hostile.larger_than_declared(16000, 16000))"], cwd=ROOT, check=True)  # fmt: skip
    for row, name in [*((row, name) for row, (name, _) in files.items()), (4, big.name)]:
        started = time.monotonic()
        answer = wait_finished(upload(stack.api, work / name), stack.api)
        report(row, name, bytes=(work / name).stat().st_size, status=answer["status"], error=answer.get("error"),
               frames=answer.get("frames_total"), seconds=round(time.monotonic() - started, 2),
               runner_restarted=stack.pid("runner") != runner, runner_peak_mb=peak_mb(runner))  # fmt: skip


def job_flood(stack: Stack, _work: Path) -> None:
    stored = upload(stack.api, bikes_video())
    key = f"input/{stored}.mp4"
    codes: dict[int, int] = {}
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for _ in range(1000):
            code = client.post(f"{stack.api}/request", json={"object": key}).status_code
            codes[code] = codes.get(code, 0) + 1
    report(3, "1000 requests of one stored object", answers=codes, seconds=round(time.monotonic() - started, 1))
    httpx.delete(f"{stack.api}/cleanup/all", timeout=120)


def big_json(stack: Stack, _work: Path) -> None:
    api, host, port = stack.pid("api"), "127.0.0.1", int(stack.api.split(":")[2].split("/")[0])
    before = peak_mb(api)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"POST /api/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        chunk, sent, started = b"100000\r\n" + b" " * 0x100000 + b"\r\n", 0, time.monotonic()
        with contextlib.suppress(OSError):
            while sent < 400 * 1024 * 1024:
                sock.sendall(chunk)
                sent += 0x100000
        sock.settimeout(5)
        answer = sock.recv(100).split(b"\r\n")[0].decode()
    report(5, "a 400 MB chunked JSON body to /api/request", answer=answer, mb_taken=round(sent / 2**20, 1),
           seconds=round(time.monotonic() - started, 2), api_peak_growth_mb=peak_mb(api) - before)  # fmt: skip


def quiet_uploads(stack: Stack, _work: Path) -> None:
    host, port = "127.0.0.1", int(stack.api.split(":")[2].split("/")[0])
    socks = []
    for _ in range(8):
        sock = socket.create_connection((host, port))
        sock.sendall(f"POST /api/upload_video HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
                     f"\r\nContent-Length: {100 * 2**20}\r\n\r\n--b\r\n".encode() + b"x" * 95)  # fmt: skip
        socks.append(sock)
    started = time.monotonic()
    other = httpx.post(f"{stack.api}/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())}).status_code
    answers = []
    for sock in socks:
        sock.settimeout(60)
        answers.append(sock.recv(100).split(b"\r\n")[0].decode())
        sock.close()
    freed = time.monotonic() - started
    after = httpx.post(f"{stack.api}/upload_video", files={"file": ("v.mp4", bikes_video().read_bytes())}).status_code
    report(6, "8 uploads quiet after 100 bytes", other_upload_meanwhile=other, quiet_ones=sorted(set(answers)),
           slots_free_after_s=round(freed, 1), upload_after=after)  # fmt: skip


def hostile_receivers(stack: Stack, work: Path) -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    drip = asyncio.run_coroutine_threadsafe(hostile.webhook_receiver("drip-headers", 2.0), loop).result()
    flood = asyncio.run_coroutine_threadsafe(hostile.webhook_receiver("big-body"), loop).result()
    relay = stack.pid("webhook-relay")
    broken = work / "broken.mp4"  # fails at once: its webhook goes out at once
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 500)
    with webhook_receiver(SECRET) as good:
        for _ in range(32):
            upload(stack.api, broken, callback_url=f"http://127.0.0.1:{drip.sockets[0].getsockname()[1]}/h")
        flooded = upload(stack.api, broken, callback_url=f"http://127.0.0.1:{flood.sockets[0].getsockname()[1]}/h")
        wait_finished(flooded, stack.api)
        fine = upload(stack.api, broken, callback_url=good.url("x"))
        ready = wait_finished(fine, stack.api)
        ended = time.monotonic()
        while fine not in good.delivered() and time.monotonic() - ended < 300:
            time.sleep(0.2)
        report(7, "32 receivers dripping their answer, one answering 600 MB, then a good one",
               good_delivered_s_after_job_end=round(time.monotonic() - ended, 1), job=ready["status"],
               relay_peak_mb=peak_mb(relay))  # fmt: skip
    httpx.delete(f"{stack.api}/cleanup/all", timeout=120)


def many_streams(stack: Stack, _work: Path) -> None:
    api, host, port = stack.pid("api"), "127.0.0.1", int(stack.api.split(":")[2].split("/")[0])
    before = peak_mb(api)
    codes: dict[str, int] = {}
    socks = []
    for _ in range(2000):
        sock = socket.create_connection((host, port))
        sock.sendall(b"GET /api/jobs/events HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        code = sock.recv(12).decode()[9:12]
        codes[code] = codes.get(code, 0) + 1
        socks.append(sock)
    report(13, "2000 event streams from one client", answers=codes, api_peak_growth_mb=peak_mb(api) - before)
    for sock in socks:
        sock.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as work, local_stack(Path(work) / "stack", WEBHOOK_SECRET=SECRET,
                                                           WEBHOOK_ALLOW_PRIVATE="true") as stack:  # fmt: skip
        for attack in (crafted_videos, job_flood, big_json, quiet_uploads, hostile_receivers, many_streams):
            attack(stack, Path(work))


if __name__ == "__main__":
    main()
