"""The port plan: one place, no two listeners on one port, and `vdetect up` refusing a plan that has them."""

import inspect
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from events.ports import DEFAULT, PortPlan
from events.settings import Settings
from vdetect.cli import app


@pytest.mark.parametrize("workers", [1, 2, 4, 16, 64, 100, 1000, 5000])
def test_the_default_plan_never_puts_two_listeners_on_one_port_at_any_number_of_workers(workers: int) -> None:
    listeners = DEFAULT.listeners(workers)
    assert len(listeners) == 9 - 1 + workers
    assert len(set(listeners.values())) == len(listeners)  # 8004 was inference worker 1 and the outbox relay
    assert DEFAULT.clashes() == []


def test_inference_workers_take_the_ports_above_their_first_that_no_other_service_has() -> None:
    assert DEFAULT.inference_ports(5) == [8003, 8007, 8008, 8009, 8010]
    assert 8080 not in DEFAULT.inference_ports(100) and 9092 not in DEFAULT.inference_ports(2000)
    with pytest.raises(ValueError, match="do not fit"):
        PortPlan(inference=65_530).inference_ports(10)


def test_a_plan_with_two_services_on_one_port_says_which() -> None:
    assert PortPlan(runner=8080).clashes() == ["api and runner share port 8080"]
    assert PortPlan(s3_relay=8004, webhook_relay=8004).clashes() == [
        "outbox-relay, s3-relay and webhook-relay share port 8004"
    ]
    assert PortPlan(api=70_000).clashes() == ["api port 70000 is not between 1 and 65535"]


def test_the_settings_defaults_are_the_plan() -> None:
    settings = Settings()
    for name, port in DEFAULT.ports().items():
        if name not in ("mongo", "kafka"):
            assert getattr(settings, f"{name.replace('-', '_')}_port") == port, name
    assert f":{DEFAULT.mongo}/" in settings.mongo()["host"] and settings.kafka_bootstrap_servers.endswith(
        f":{DEFAULT.kafka}"
    )
    assert settings.public_url.endswith(f":{DEFAULT.api}")


def test_vdetect_up_has_an_option_for_every_port_of_the_plan_defaulting_to_it() -> None:
    command = next(command for command in app.registered_commands if command.callback.__name__ == "up")
    assert command.callback is not None
    parameters = inspect.signature(command.callback).parameters
    for name, port in DEFAULT.ports().items():
        assert parameters[f"{name.replace('-', '_')}_port"].default == port, name


def up(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "vdetect", "up", "--data-dir", str(tmp_path / "data"), *options]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_vdetect_up_refuses_a_clash_before_anything_starts(tmp_path: Path) -> None:
    result = up(tmp_path, "--runner-port", "8080")
    assert result.returncode == 2
    assert "vdetect up: api and runner share port 8080" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_vdetect_up_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = up(tmp_path, "--api-port", str(port))
    assert result.returncode == 2
    assert f"port {port} (api) is taken by another program" in result.stderr
    assert not (tmp_path / "data").exists()
