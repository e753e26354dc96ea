"""Logs never carry secrets: a crash's traceback is logged without the local variables of its frames."""

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from events.log import configure_logging, get_logger


@pytest.fixture
def service_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The services' logging, writing into a buffer; undone after (other tests log to the real stdout)."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("test")
    yield buffer
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()


def test_a_logged_crash_shows_where_it_happened_but_not_its_local_variables(service_logging: io.StringIO) -> None:
    def connect() -> None:
        password = "hunter2-in-a-local"  # noqa: F841 - the secret a traceback with locals would print
        raise ConnectionError("database unreachable")

    try:
        connect()
    except ConnectionError:
        get_logger("test").exception("service crashed")
    (line,) = [json.loads(text) for text in service_logging.getvalue().splitlines() if "service crashed" in text]
    assert "hunter2" not in json.dumps(line)
    frames = line["exception"][0]["frames"]
    assert frames[-1]["name"] == "connect" and "locals" not in frames[-1]
    assert line["exception"][0]["exc_value"] == "database unreachable"
