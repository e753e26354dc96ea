"""The monitoring set-up of docker-compose, checked statically: Prometheus' config (with promtool,
offline), its targets against the services, and the Grafana dashboard against the metrics we export."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import events.metrics  # noqa: F401 - registers the metrics
from events.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "vdetect.json").read_text())


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is installed by `make test`"
    checked = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_service_of_ours_is_scraped_on_its_port_and_scaled_ones_one_by_one() -> None:
    settings = Settings()
    ports = {"api": settings.api_port, "runner": settings.runner_port, "inference": settings.inference_port,
             "outbox-relay": settings.outbox_relay_port, "s3-relay": settings.s3_relay_port,
             "webhook-relay": settings.webhook_relay_port}  # fmt: skip
    scraped = {}
    for job in PROMETHEUS["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                scraped[name] = dns["port"]
    assert scraped == ports
    assert all(name in COMPOSE["services"] for name in scraped)
    (inference,) = [job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == "inference"]
    assert inference["dns_sd_configs"][0]["type"] == "A"  # every replica of `--scale inference=N`


def test_the_dashboard_shows_what_operators_need_from_metrics_we_export() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}
    titles = [panel["title"] for panel in DASHBOARD["panels"]]
    for needed in ("Jobs by status", "Frames per second per stage", "Inference latency", "Consumer lag",
                   "Relay lag", "Dead letters", "Resume tokens lost"):  # fmt: skip
        assert any(title.startswith(needed) for title in titles), needed
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\bvdetect_[a-z_]+", target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)
            assert target["datasource"]["uid"] == "prometheus"


def test_grafana_is_provisioned_from_the_committed_files() -> None:
    grafana = COMPOSE["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/vdetect.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert (ROOT / mounts[dashboards]).resolve() == (MONITORING / "grafana/dashboards").resolve()
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    prometheus = COMPOSE["services"]["prometheus"]
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
