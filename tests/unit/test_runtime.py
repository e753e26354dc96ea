"""Safe defaults: a service that would listen beyond this machine without an API key does not start."""

import os
import subprocess
import sys

import pytest

from events.runtime import loopback


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
