"""The Kubernetes manifests (deploy/kubernetes), checked statically: no cluster runs on these machines.

They render offline (`kubectl kustomize`), validate strictly against Kubernetes 1.37's schemas
(kubernetes-validate) and KEDA's and the Prometheus Operator's CRDs (tests/kubernetes_crds.py), pass
checkov with each skip justified, and agree with the code: commands, ports, probes, settings, secrets,
topics and consumer groups in the scalers, replica bounds, the image's user.
"""

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from starlette.routing import Match

from api.app import create_app
from events import metrics, topics
from events.health import health_app
from events.ports import DEFAULT
from events.settings import Settings
from vdetect.cli import app

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
TOOLS = ROOT / ".venv-k8s" / "bin"  # `make test` installs them (Makefile, K8S_TOOLS)
OVERLAYS = ["base", "overlays/production", "overlays/production-gpu", "datastores"]
COMMANDS = {command.name or command.callback.__name__.replace("_", "-") for command in app.registered_commands}
SERVICES = {name for name in DEFAULT.ports() if name not in ("mongo", "kafka")}
NOT_SETTINGS = {"SECRETS_DIR", "FORWARDED_ALLOW_IPS"}  # read by pydantic-settings' sources and by uvicorn
SECRET_KEY = re.compile("PASSWORD|SECRET|API_KEY|ACCESS_KEY|USERNAME")
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}


@cache
def rendered(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl renders the manifests offline"
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(overlay: str, kind: str | None = None) -> list[dict[str, Any]]:
    found = [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]
    return [doc for doc in found if kind is None or doc["kind"] == kind]


def by_name(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in resources(overlay, kind)}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def config(overlay: str) -> dict[str, str]:
    (config_map,) = resources(overlay, "ConfigMap")
    return config_map["data"]


def environment(overlay: str, deployment: dict[str, Any]) -> dict[str, str]:
    return {**config(overlay), **{item["name"]: item["value"] for item in container(deployment).get("env", [])}}


def settings_of(overlay: str, deployment: dict[str, Any]) -> Settings:
    values = {key.lower(): value for key, value in environment(overlay, deployment).items() if key not in NOT_SETTINGS}
    return Settings.model_validate(values)


def serves(app: FastAPI, path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{name} is missing: `make test` installs it ({TOOLS.parent.name})"
    return str(path)


def validate(*paths: Path) -> subprocess.CompletedProcess:
    command = [tool("kubernetes-validate"), "-k", "1.37.0", "--strict", "--quiet", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True)


def test_the_manifests_validate_strictly_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    paths = []
    for overlay in OVERLAYS:  # one run for all: the schemas take a second to load
        paths.append(tmp_path / f"{overlay.replace('/', '-')}.yaml")
        paths[-1].write_text(rendered(overlay))
    result = validate(*paths)
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)
    assert set(unknown) <= CRD_KINDS  # those: test_keda_and_prometheus_resources_match_their_crds


def test_the_schema_validator_does_refuse_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(rendered("base").replace("  replicas: 2\n", "  replicas: two\n", 1))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(rendered("base").replace("  revisionHistoryLimit: 5\n", "  revisionHistoryLimits: 5\n", 1))
    result = validate(broken, unknown)
    failures = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert result.returncode != 0
    assert any("broken.yaml" in line for line in failures)
    assert any("unknown.yaml" in line for line in failures)  # --strict: a misspelt field is an error


@cache
def crd_problems() -> dict[str, dict[str, list[str]]]:
    """The CRD check of the overlays and of two broken ones, in one run (the models take seconds to load)."""
    text = rendered("overlays/production")
    inputs = {"production": text, "production-gpu": rendered("overlays/production-gpu"),
              "wrong type": text.replace('lagThreshold: "32"', "lagThreshold: 32"),
              "misspelt": text.replace("minReplicaCount: 1", "minReplicas: 1")}  # fmt: skip
    script = ROOT / "tests" / "kubernetes_crds.py"
    result = subprocess.run([tool("python"), str(script)], input=json.dumps(inputs), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_keda_and_prometheus_resources_match_their_crds() -> None:
    found = crd_problems()
    names = {"ScaledObject/inference", "ScaledObject/runner", "ServiceMonitor/vdetect"}
    assert found["production"] == found["production-gpu"] == {name: [] for name in names}


def test_the_crd_check_does_refuse_wrong_types_and_unknown_fields() -> None:
    wrong_type, misspelt = crd_problems()["wrong type"], crd_problems()["misspelt"]
    assert wrong_type["ScaledObject/inference"] and not wrong_type["ScaledObject/runner"]
    assert misspelt["ScaledObject/inference"] and misspelt["ScaledObject/runner"]


def test_the_policy_scanner_passes_and_each_skip_is_justified(tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered("overlays/production-gpu") + "---\n" + rendered("datastores"))
    command = [tool("checkov"), "--framework", "kubernetes", "-f", str(path), "--output", "json", "--skip-download"]
    result = subprocess.run(command, capture_output=True, text=True)
    report = json.loads(result.stdout)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert result.returncode == 0 and not failed, failed
    assert report["summary"]["passed"] > 500  # it did scan the resources
    skipped = report["results"]["skipped_checks"]
    assert {check["check_id"] for check in skipped} == {"CKV_K8S_43"}  # the image's digest: see pod-defaults.yaml
    assert all(len(check["check_result"].get("suppress_comment", "")) > 20 for check in skipped)


@pytest.mark.parametrize("overlay", ["base", "overlays/production-gpu"])
def test_every_service_runs_its_command_on_the_port_plan_with_probes_the_code_serves(overlay: str) -> None:
    deployments = by_name(overlay, "Deployment")
    assert set(deployments) == SERVICES
    workers = health_app("any", dict)
    api = create_app(Settings())
    for name, deployment in deployments.items():
        spec = container(deployment)
        assert spec["args"] == [name] and name in COMMANDS
        (port,) = spec["ports"]
        assert port == {"name": "http", "containerPort": DEFAULT.ports()[name]}, name
        paths = {probe: spec[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in spec:
                assert spec[probe]["httpGet"]["port"] == "http", (name, probe)
        if name == "api":
            assert set(paths.values()) == {"/api/health"} and serves(api, "/api/health")
        else:  # liveness: the process answers; readiness: it has joined its consumer groups
            assert paths == {"livenessProbe": "/health", "readinessProbe": "/health/ready"}, name
            assert serves(workers, "/health") and serves(workers, "/health/ready")
        settings = settings_of(overlay, deployment)
        assert getattr(settings, f"{name.replace('-', '_')}_port") == DEFAULT.ports()[name]


@pytest.mark.parametrize("overlay", ["base", "overlays/production-gpu"])
def test_every_variable_is_a_setting_with_a_valid_value_and_no_secret_is_in_the_manifests(overlay: str) -> None:
    fields = set(Settings.model_fields)
    for name, deployment in by_name(overlay, "Deployment").items():
        env = environment(overlay, deployment)
        unknown = {key for key in env if key.lower() not in fields and key not in NOT_SETTINGS}
        assert not unknown, f"{name} sets variables no code reads: {unknown}"
        secrets = {key for key in env if SECRET_KEY.search(key) and key not in NOT_SETTINGS}
        assert not secrets, name  # those are files of the Secret
        settings_of(overlay, deployment)  # a wrong value raises
        spec = container(deployment)
        mounts = {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["secrets"]["secret"]["secretName"] == "vdetect" and mounts["secrets"] == env["SECRETS_DIR"]
        assert "emptyDir" in volumes["tmp"] and mounts["tmp"] == "/tmp"  # the one place the services write
    assert not resources(overlay, "Secret")
    assert not [path for path in KUBERNETES.rglob("kustomization.yaml") if "secretGenerator" in path.read_text()]


def test_secrets_come_from_the_files_of_secrets_dir_and_the_environment_wins(tmp_path: Path, monkeypatch) -> None:
    """As Kubernetes mounts a Secret: each key a link into a timestamped folder, beside `..data`."""
    folder = tmp_path / "secrets"
    data = folder / "..2026_12_03_00_00_00.000"
    data.mkdir(parents=True)
    (folder / "..data").symlink_to(data.name)
    for key, value in {"API_KEY": "k" * 32 + "\n", "MONGO_PASSWORD": "p@ss:w/rd%", "MONGO_USERNAME": "app"}.items():
        (data / key).write_text(value)
        (folder / key).symlink_to(Path("..data") / key)
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("MONGO_USERNAME", "from-the-environment")
    settings = Settings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k" * 32
    assert settings.mongo()["password"] == "p@ss:w/rd%" and settings.mongo()["username"] == "from-the-environment"
    monkeypatch.delenv("SECRETS_DIR")
    monkeypatch.delenv("MONGO_USERNAME")
    assert Settings().mongo_password is None  # no folder named: no files read


def test_readiness_answers_503_until_a_consumer_has_joined_its_groups() -> None:
    from fastapi.testclient import TestClient

    joined = {"ready": False}
    client = TestClient(health_app("inference", lambda: dict(joined)))
    assert client.get("/health").status_code == 200  # alive all along: liveness never restarts it
    waiting = client.get("/health/ready")
    assert waiting.status_code == 503 and waiting.json()["ready"] is False
    joined["ready"] = True
    assert client.get("/health/ready").status_code == 200
    assert TestClient(health_app("s3-relay", dict)).get("/health/ready").status_code == 200  # no groups


def test_the_scalers_follow_the_topics_and_groups_the_services_consume() -> None:
    scaled = by_name("overlays/production", "ScaledObject")
    deployments = by_name("overlays/production", "Deployment")
    assert set(scaled) == {"inference", "runner"}
    for name, expected in {"inference": (topics.INFERENCE_TASKS, topics.INFERENCE_GROUP),
                           "runner": (topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP)}.items():  # fmt: skip
        spec, settings = scaled[name]["spec"], settings_of("overlays/production", deployments[name])
        assert spec["scaleTargetRef"] == {"name": name}
        (kafka,) = [trigger for trigger in spec["triggers"] if trigger["type"] == "kafka"]
        meta = kafka["metadata"]
        group = f"{settings.kafka_topic_prefix}{expected[1]}"  # as events/clients.py names it
        assert (meta["topic"], meta["consumerGroup"]) == (settings.topic(expected[0]), group)
        assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
        assert meta["offsetResetPolicy"] == "earliest"  # as the consumers (events/clients.py)
        assert meta["allowIdleConsumers"] == "false" and meta["scaleToZeroOnInvalidOffset"] == "false"
        # a group that never committed shows no lag (kedacore/keda#2612): never scaled to zero
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.kafka_partitions
        assert int(meta["lagThreshold"]) >= 1
    runner = scaled["runner"]["spec"]
    settings = settings_of("overlays/production", deployments["runner"])
    modifiers = runner["advanced"]["scalingModifiers"]
    names = {trigger["name"] for trigger in runner["triggers"]}
    assert set(re.findall(r"\w+", modifiers["formula"])) == names == {"waiting", "reading"}
    assert int(modifiers["target"]) == settings.runner_active_jobs  # one runner per RUNNER_ACTIVE_JOBS jobs
    (reading,) = [trigger for trigger in runner["triggers"] if trigger["type"] == "prometheus"]
    assert re.search(rf"\b{metrics.RUNNER_JOBS._name}\b", reading["metadata"]["query"])
    # one in-flight window of a job behind asks for at least one worker
    lag = int(scaled["inference"]["spec"]["triggers"][0]["metadata"]["lagThreshold"])
    assert lag <= settings.runner_frames_in_flight
    assert by_name("overlays/production-gpu", "ScaledObject")["inference"]["spec"]["triggers"][0]["metadata"][
        "lagThreshold"
    ] != str(lag)


def test_relays_run_once_and_scaled_services_stop_within_their_grace_period() -> None:
    deployments = by_name("base", "Deployment")
    for name in ("outbox-relay", "s3-relay", "webhook-relay"):
        spec = deployments[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, name
    budgets = by_name("base", "PodDisruptionBudget")
    assert set(budgets) == SERVICES
    assert budgets["api"]["spec"] == {"minAvailable": 1, "selector": deployments["api"]["spec"]["selector"]}
    # tests/integration/test_scale_down.py: a worker on SIGTERM exits within this, its batch committed
    assert deployments["inference"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_pods_run_as_the_images_user_without_privileges() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
    for name, deployment in by_name("overlays/production-gpu", "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user) and pod["automountServiceAccountToken"] is False
        spec = container(deployment)
        context = spec["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][part]), (name, part)
    (namespace,) = resources("base", "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_gpu_overlay_runs_inference_on_gpu_nodes_with_the_gpu_image() -> None:
    gpu = by_name("overlays/production-gpu", "Deployment")
    cpu = by_name("overlays/production", "Deployment")
    inference = container(gpu["inference"])
    assert inference["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert inference["image"].endswith("-gpu") and "FROM runtime AS gpu" in (ROOT / "Dockerfile").read_text()
    settings = settings_of("overlays/production-gpu", gpu["inference"])
    assert (settings.inference_device, settings.inference_engine) == ("cuda", "onnxruntime")
    pod = gpu["inference"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    for name in SERVICES - {"inference"}:  # everything else as on CPU nodes
        assert gpu[name] == cpu[name], name


def test_network_policies_admit_only_what_the_services_use() -> None:
    policies = by_name("base", "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress = {rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: rule["ports"][0]["port"]
              for rule in policies["datastores"]["spec"]["egress"]}  # fmt: skip
    settings = settings_of("base", by_name("base", "Deployment")["runner"])
    mongo = urlsplit(settings.mongo_uri.get_secret_value())
    kafka = [urlsplit(f"//{server}") for server in settings.kafka_bootstrap_servers.split(",")]
    assert egress["mongodb"] == mongo.port and mongo.hostname and mongo.hostname.endswith(".mongodb.svc.cluster.local")
    assert {egress["kafka"]} == {server.port for server in kafka}
    admitted = {policy["metadata"]["namespace"]: policy["spec"]["ingress"][1]["ports"][0]["port"]
                for policy in resources("datastores", "NetworkPolicy")}  # fmt: skip
    assert admitted == egress
    part_of = {"app.kubernetes.io/part-of": "vdetect"}
    for deployment in by_name("base", "Deployment").values():  # the datastores' policies select these labels
        assert part_of.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_service_monitor_scrapes_every_service() -> None:
    (monitor,) = resources("overlays/production", "ServiceMonitor")
    services = by_name("overlays/production", "Service")
    assert set(services) == SERVICES
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    for name, service in services.items():
        assert selector.items() <= service["metadata"]["labels"].items(), name
        (port,) = service["spec"]["ports"]
        assert port["name"] == endpoint["port"] and port["port"] == DEFAULT.ports()[name], name
    assert endpoint["path"] == "/metrics"
