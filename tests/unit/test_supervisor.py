"""The local stack's supervisor: a service that keeps dying is reported as failing with its reason, in
the status file that `GET /api/health` reads."""

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.stack_status import services_down
from vdetect.stack import FAILING_AFTER, Child, reason_of, write_status

ERROR_LINE = '{"event": "cannot listen on 127.0.0.1:8004", "level": "error", "service": "outbox-relay"}'


def dying(tmp_path: Path) -> Child:
    """A real process that logs an error line and exits 1 at once, as a service that lost its port does."""
    script = f"import sys; print('starting'); print({ERROR_LINE!r}); print('bye'); sys.exit(1)"
    return Child("outbox-relay", [sys.executable, "-c", script], {}, log_path=tmp_path / "relay.log", port=8004)


def run_until_exited(child: Child) -> None:
    deadline = time.monotonic() + 30
    while child.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_reason_is_the_exit_and_the_last_error_line() -> None:
    assert reason_of(1, ["starting", ERROR_LINE, "bye"]) == "exit code 1: cannot listen on 127.0.0.1:8004"
    assert reason_of(-9, []) == "killed by signal 9"
    assert reason_of(3, ["Traceback (most recent call last):", "OSError: boom"]) == "exit code 3: OSError: boom"
    assert len(reason_of(1, ["x" * 5000])) <= 300


def test_a_service_that_exits_again_and_again_is_reported_failing_with_its_reason(tmp_path: Path) -> None:
    child = dying(tmp_path)
    child.start()
    states = []
    for _ in range(FAILING_AFTER):
        run_until_exited(child)
        now = time.monotonic()
        assert child.check(now) is False  # exited: a restart is scheduled after a back-off
        states.append(child.state)
        assert child.check(child.restart_at or 0) is True  # the back-off is over: started again
    run_until_exited(child)
    child.wait_stopped(time.monotonic())
    assert states == ["restarting", "restarting", "failing"]
    assert child.reason == "exit code 1: cannot listen on 127.0.0.1:8004"
    assert "bye" in (tmp_path / "relay.log").read_text()  # its output still reaches its log


def test_health_names_the_services_that_are_down_from_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "stack-status.json"
    failing = dying(tmp_path)
    failing.start()
    for _ in range(FAILING_AFTER):
        run_until_exited(failing)
        failing.check(time.monotonic())
        if failing.failures < FAILING_AFTER:
            failing.check(failing.restart_at or 0)
    running = Child("runner", [sys.executable, "-c", "import time; time.sleep(30)"], {}, port=8002)
    running.start()
    try:
        write_status(status, [failing, running])
        (down,) = services_down(status)
        assert down.name == "outbox-relay" and down.state == "failing"
        assert down.reason == "exit code 1: cannot listen on 127.0.0.1:8004"
        assert json.loads(status.read_text())["services"]["runner"]["state"] == "running"
    finally:
        running.terminate()
        running.wait_stopped(time.monotonic() + 5)
        failing.wait_stopped(time.monotonic())


def test_a_missing_or_stale_status_file_is_reported_not_taken_for_health(tmp_path: Path) -> None:
    (missing,) = services_down(tmp_path / "none.json")
    assert missing.name == "stack" and missing.state == "unknown" and "cannot be read" in missing.reason
    status = tmp_path / "stack-status.json"
    write_status(status, [])
    assert services_down(status) == []
    (stale,) = services_down(status, now=datetime.now(UTC) + timedelta(minutes=5))
    assert stale.state == "unknown" and "has not reported for" in stale.reason
