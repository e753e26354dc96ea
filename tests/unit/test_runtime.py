"""Safe defaults: a service that would listen beyond this machine without an API key does not start."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiokafka.protocol.admin import CreateTopicsResponse_v0, CreateTopicsResponse_v1
from typer.testing import CliRunner

from events.clients import refused_topics
from events.runtime import loopback, read_ahead
from events.settings import Settings
from tests.harness import EPHEMERAL_RANGE, LOWEST_PORT, free_port
from vdetect.cli import app


@pytest.mark.parametrize("service", ["api", "runner", "outbox-relay", "inference"])
def test_a_service_on_a_network_address_without_a_key_refuses_to_start(service: str) -> None:
    env = {**os.environ, "BIND_HOST": "0.0.0.0", "API_KEY": "", "ALLOW_ANONYMOUS": "false"}
    started = subprocess.run([sys.executable, "-m", "vdetect", service], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert started.returncode == 2
    assert "without API_KEY" in started.stdout and "ALLOW_ANONYMOUS" in started.stdout


def test_loopback_addresses_need_no_key() -> None:
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost")
    assert not loopback("0.0.0.0") and not loopback("10.0.0.5") and not loopback("api.example.com")


def test_a_wrong_setting_names_the_setting_never_its_value() -> None:
    env = {**os.environ, "KAFKA_PARTITIONS": "many", "KAFKA_TOPIC_PREFIX": "jobs/secret-prefix-value"}
    started = subprocess.run([sys.executable, "-m", "vdetect", "topics"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert started.returncode == 2
    assert "invalid setting KAFKA_PARTITIONS" in started.stderr and "KAFKA_TOPIC_PREFIX" in started.stderr
    assert "Traceback" not in started.stderr and "secret-prefix-value" not in started.stderr + started.stdout


def test_refused_topics_are_read_from_the_answer_codes() -> None:
    """aiokafka's create_topics does not raise: the answer holds a code per topic."""
    v0 = CreateTopicsResponse_v0(topic_errors=[("a", 0), ("b", 37), ("c", 36)])
    assert refused_topics(v0) == {"b": "InvalidPartitionsError: no message"}
    v1 = CreateTopicsResponse_v1(topic_errors=[("a", 38, "replication factor: 3 larger than available brokers: 1")])
    assert refused_topics(v1) == {
        "a": "InvalidReplicationFactorError: replication factor: 3 larger than available brokers: 1"
    }
    assert refused_topics(CreateTopicsResponse_v1(topic_errors=[("a", 0, None), ("b", 36, "exists")])) == {}


def test_mongo_credentials_go_to_the_client_as_they_are() -> None:
    """A password with URI metacharacters needs no encoding: it is a client argument, not part of the URI."""
    password = "p+ss/w@rd:100%"
    settings = Settings(mongo_uri="mongodb://db:27017/?replicaSet=rs0", mongo_username="app", mongo_password=password)
    assert settings.mongo() == {"host": "mongodb://db:27017/?replicaSet=rs0", "username": "app", "password": password}
    assert password not in repr(settings) and password not in str(settings.model_dump())
    assert Settings(mongo_password="").mongo() == {"host": "mongodb://127.0.0.1:27017/?directConnection=true"}


@pytest.mark.parametrize(("body", "code"), [({"status": "ok", "ready": True}, 0), ({"status": "ok"}, 0),
                                            ({"status": "ok", "ready": False}, 1), ("not json", 1)])  # fmt: skip
def test_the_health_command_fails_while_a_service_is_not_ready(body: object, code: int) -> None:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            text = json.dumps(body) if isinstance(body, dict) else str(body)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        checked = CliRunner().invoke(app, ["health", "--port", str(port)])
        server.shutdown()
    assert checked.exit_code == code


def test_a_service_stuck_before_it_is_ready_exits_to_be_restarted() -> None:
    """A startup that never ends (a broker that never answers) must not leave a live, useless process."""
    stuck = "import asyncio\nfrom events.runtime import startup_deadline\nasync def main():\n" \
            "    startup_deadline(0.3)\n    await asyncio.sleep(30)\nasyncio.run(main())\n"  # fmt: skip
    ended = subprocess.run([sys.executable, "-c", stuck], capture_output=True, text=True, timeout=30)
    assert ended.returncode == 1 and "did not become ready in time" in ended.stdout + ended.stderr
    ready = stuck.replace("startup_deadline(0.3)", "startup_deadline(0.3).cancel()").replace("(30)", "(0.6)")
    assert subprocess.run([sys.executable, "-c", ready], timeout=30).returncode == 0


def test_a_service_whose_port_is_taken_exits_at_once_saying_so() -> None:
    """uvicorn exits the process from its own task when it cannot listen; the service must rather stop
    as a whole, with its reason, so that its supervisor starts it again (it once hung half stopped)."""
    service = "import sys\nfrom fastapi import FastAPI\nfrom events.runtime import http_server, run_service\n" \
              "async def main(settings, stop):\n" \
              "    async with http_server(FastAPI(), '127.0.0.1', int(sys.argv[1])):\n" \
              "        await stop.wait()\nrun_service('probe', main)\n"  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ended = subprocess.run([sys.executable, "-c", service, str(port)], capture_output=True, text=True, timeout=60)
    assert ended.returncode == 1, ended.stdout + ended.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in ended.stdout + ended.stderr


async def test_read_ahead_stays_at_most_depth_items_ahead_and_closes_the_iterator_when_stopped_early() -> None:
    produced, closed = [], threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for i in range(100):
                produced.append(i)
                yield i
        finally:
            closed.set()

    seen = []
    async with contextlib.aclosing(read_ahead(numbers(), 3)) as ahead:
        async for number in ahead:
            seen.append(number)
            await asyncio.sleep(0.02)  # a slow consumer: the thread waits, it does not run away
            assert len(produced) <= len(seen) + 4  # the item handed over, `depth` queued, one being made
            if number == 5:
                break
    assert seen == [0, 1, 2, 3, 4, 5] and closed.is_set()  # closed in its own thread, before the exit


async def test_read_ahead_raises_the_iterators_error_to_the_consumer() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("not a video")

    seen = []
    with pytest.raises(ValueError, match="not a video"):
        async for number in read_ahead(broken(), 2):
            seen.append(number)
    assert seen == [1]


def test_free_ports_are_consecutive_and_below_the_ephemeral_range() -> None:
    """A port from the ephemeral range may be taken by an outgoing connection before a service listens
    on it (it happened to an inference worker, whose port is the stack's inference port + its number)."""
    below = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(20):
        first = free_port(4)
        assert first >= LOWEST_PORT and first + 4 <= below
        for port in range(first, first + 4):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))  # free
    picked = set(range(LOWEST_PORT, below - 50))  # picked for other servers, not listened on yet
    assert below - 50 <= free_port(2, picked) <= below - 2
