"""`vdetect topics` against a real broker (Tansu): topics created with the configured partitions and
replication factor, a second run a no-op, a broker's refusal or a wrong setting a non-zero exit."""

import os
import subprocess
import sys

from aiokafka.admin import AIOKafkaAdminClient

from events import topics
from events.clients import ensure_topics
from tests.conftest import settings_env


def vdetect_topics(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vdetect", "topics"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


async def test_topics_are_created_once_and_a_wrong_configuration_exits_non_zero(settings) -> None:
    env = {**settings_env(settings), "KAFKA_REPLICATION_FACTOR": "1"}
    created = vdetect_topics(env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "kafka topics created" in created.stdout and '"replication_factor": 1' in created.stdout
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(name) for name in topics.ALL])
    finally:
        await admin.close()
    assert {topic["topic"] for topic in described} == {settings.topic(name) for name in topics.ALL}
    assert all(len(topic["partitions"]) == settings.kafka_partitions for topic in described)
    await ensure_topics(settings)  # the topics exist: nothing to do, no error

    refused = vdetect_topics({**env, "KAFKA_TOPIC_PREFIX": "jobs/", "KAFKA_REPLICATION_FACTOR": "0"})
    assert refused.returncode == 2
    assert "KAFKA_TOPIC_PREFIX" in refused.stderr and "KAFKA_REPLICATION_FACTOR" in refused.stderr
