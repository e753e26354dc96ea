"""The one place that builds clients: MongoDB, Kafka producer/consumer/admin, object storage."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition
from minio import Minio
from pymongo import AsyncMongoClient

from events import topics
from events.contracts import MAX_MESSAGE_BYTES
from events.log import get_logger
from events.retry import after_unknown_answer, on_startup, transient
from events.settings import Settings
from events.storage import DirectoryStore, ObjectStore, S3Store

log = get_logger(__name__)
COMMIT_TIMEOUT_S = 30
OFFSETS_TIMEOUT_S = 5


@asynccontextmanager
async def mongo_client(host: str, **options: Any) -> AsyncIterator[AsyncMongoClient[Any]]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(host, tz_aware=True, serverSelectionTimeoutMS=10_000, **options)
    try:
        await on_startup(client.admin.command)("ping")
        yield client
    finally:
        await client.close()


def producer_options(settings: Settings) -> dict[str, Any]:
    """Apache Kafka and Tansu differ in one setting: KAFKA_IDEMPOTENCE (Tansu refuses InitProducerId).
    Either way every message waits for all in-sync replicas and is keyed by its job id."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "linger_ms": 1,
        "max_request_size": MAX_MESSAGE_BYTES,
    }


class Producer(AIOKafkaProducer):  # type: ignore[misc]
    """Sends a message again when the broker answers it with an unknown error (`after_unknown_answer`).
    Without this, the sending service crashed, and inference workers that left their group that way
    could not join it again. The message may then be there twice, as after any redelivery: every
    consumer here is idempotent."""

    async def send(self, topic: str, *args: Any, **options: Any) -> asyncio.Future[RecordMetadata]:
        """aiokafka's `send` (whose arguments `send_and_wait` passes by position)."""
        first = await super().send(topic, *args, **options)
        return asyncio.ensure_future(self._delivered(first, topic, args, options))

    async def _delivered(
        self, first: asyncio.Future[RecordMetadata], topic: str, args: tuple[Any, ...], options: dict[str, Any]
    ) -> RecordMetadata:
        try:
            return await first
        except UnknownError:
            log.warning("the broker answered a send with an unknown error, sending again", topic=topic)
        return await after_unknown_answer(self._send_once)(topic, *args, **options)

    async def _send_once(self, topic: str, *args: Any, **options: Any) -> RecordMetadata:
        return await (await super().send(topic, *args, **options))


@asynccontextmanager
async def kafka_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = Producer(**producer_options(settings))
    try:  # closed even when it never started (a start given up or cancelled warns "Unclosed" otherwise)
        await on_startup(producer.start)()
        yield producer
    finally:
        await producer.stop()


class Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Whether a consumer has joined its group: an assignment has arrived, even an empty one (a
    consumer beyond the topic's partitions is a member with nothing to do, not an unready one)."""

    def __init__(self) -> None:
        self.joined = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True


class Consumer(AIOKafkaConsumer):  # type: ignore[misc]
    """A consumer of one topic, in group `group`, that knows whether it has joined it (`joined`)."""

    def __init__(self, topic: str, group_id: str, **options: Any) -> None:
        super().__init__(group_id=group_id, **options)
        self.topic, self.group = topic, group_id
        self.membership = Membership()
        self.subscribe([topic], listener=self.membership)

    @property
    def joined(self) -> bool:
        return self.membership.joined


QUIET_FETCH_WAIT_MS = 1000


@asynccontextmanager
async def kafka_consumer(
    settings: Settings, topic: str, group_id: str, max_poll_records: int = 100, quiet: bool = False, **options: Any
) -> AsyncIterator[Consumer]:
    """At-least-once: no auto-commit, the caller commits after it has finished a message.

    `quiet`: a consumer off the path of a job's frames and outcome (the runner's deletions, the render
    workers) lets the broker hold its fetch QUIET_FETCH_WAIT_MS instead of KAFKA_FETCH_MAX_WAIT_MS: a
    fetch a second instead of ten while nothing comes (Tansu holds a fetch for its whole wait whatever
    arrives meanwhile, and answers each at a cost: on the 2-core machine the idle stack's broker spent
    80 ms of CPU a second on seven consumers' fetches)."""
    wait_ms = settings.kafka_fetch_max_wait_ms
    consumer = Consumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_topic_prefix}{group_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 500),
        max_poll_records=max_poll_records,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=max(QUIET_FETCH_WAIT_MS, wait_ms) if quiet else wait_ms,
        **options,
    )
    try:
        await on_startup(consumer.start)()
        yield consumer
    finally:
        await consumer.stop()


class GroupOffsets:
    """Where a consumer group stands on a topic, read from outside the group (it joins nothing).

    With the group's committed offsets and the topic's end offsets, a producer can tell whether a
    message it sent is still waiting (committed <= offset < end), was consumed (committed > offset),
    or is gone (offset >= end: an in-memory broker restarted and the topic was created again)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer, self.topic = consumer, topic

    async def partitions(self) -> list[TopicPartition]:
        found = self.consumer.partitions_for_topic(self.topic) or await self._refresh()
        return [TopicPartition(self.topic, p) for p in sorted(found)]

    async def _refresh(self) -> set[int]:
        async with asyncio.timeout(OFFSETS_TIMEOUT_S):
            await self.consumer.topics()  # fetches the metadata of every topic, this one included
        return self.consumer.partitions_for_topic(self.topic) or set()

    @transient
    async def ends(self) -> dict[int, int]:
        """The end offset (next offset to be written) of each partition of the topic."""
        partitions = await self.partitions()
        async with asyncio.timeout(OFFSETS_TIMEOUT_S):
            ends = await self.consumer.end_offsets(partitions)
        return {tp.partition: ends[tp] for tp in partitions}

    @transient
    async def positions(self) -> tuple[dict[int, int], dict[int, int]]:
        """(committed offset, end offset) per partition. A group that never committed, or whose
        coordinator does not answer in time (a broker just restarted), counts as 0: its messages are
        then taken as still waiting wherever the topic still holds them, which only delays a decision.
        Every call to the broker is bounded: a TimeoutError means "ask again later"."""
        ends = await self.ends()
        committed = {}
        for partition in ends:
            tp = TopicPartition(self.topic, partition)
            try:
                async with asyncio.timeout(OFFSETS_TIMEOUT_S):
                    committed[partition] = await self.consumer.committed(tp) or 0
            except TimeoutError:
                log.warning("committed offset unknown, counted as 0", topic=self.topic, partition=partition)
                committed[partition] = 0
        return committed, ends


@asynccontextmanager
async def group_offsets(settings: Settings, topic: str, group_id: str) -> AsyncIterator[GroupOffsets]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_topic_prefix}{group_id}",
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        await on_startup(consumer.start)()
        yield GroupOffsets(consumer, settings.topic(topic))
    finally:
        await consumer.stop()


def next_offsets(messages: list[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit once `messages` are done: past the last of them, per partition."""
    offsets: dict[TopicPartition, int] = {}
    for message in messages:
        partition = TopicPartition(message.topic, message.partition)
        offsets[partition] = max(offsets.get(partition, 0), message.offset + 1)
    return offsets


def records(batches: dict[TopicPartition, list[ConsumerRecord]]) -> list[ConsumerRecord]:
    """The messages of a `getmany` answer, partition after partition."""
    return [message for partition in batches.values() for message in partition]


# What aiokafka raises for a commit the group no longer takes from this member (IllegalStateError: no
# partition assigned at all, in the middle of a rebalance)
COMMIT_REFUSED = (CommitFailedError, UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError,
                  IllegalStateError)  # fmt: skip


async def commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int] | None = None) -> None:
    """Commit what was consumed, or the given offsets (the next message to read, per partition).

    If the group rebalanced meanwhile, the commit is refused and the messages go to the partition's
    new owner: harmless, as every consumer is idempotent. Offsets of a partition taken away since its
    messages were read (a batch read ahead, or settled, across a rebalance) are left to the new owner,
    and those of the partitions still held are committed. A commit that does not finish in time
    raises (aiokafka retries some errors forever, such as a topic gone with an in-memory broker): a
    stuck consumer is worse than a restarted one."""
    if offsets is not None and (lost := offsets.keys() - consumer.assignment()):
        log.warning("commit refused after a rebalance; messages will be redelivered", partitions_taken=len(lost))
        offsets = {partition: offset for partition, offset in offsets.items() if partition not in lost}
        if not offsets:
            return
    try:
        async with asyncio.timeout(COMMIT_TIMEOUT_S):
            await consumer.commit(offsets)
    except COMMIT_REFUSED as error:
        log.warning("commit refused after a rebalance; messages will be redelivered", error=type(error).__name__)


# Every topic takes what the producers may send (`max_request_size`), whatever the broker's default
# (1 MiB: a raw frame is 0.45 MB at 640x480, 1.4 MB at 1280x720). Frames are worth keeping only until
# they are detected: `inference_tasks` keeps 6 hours (Kafka's default, 7 days, would hold about 4 TB
# at 100 frames/s); a job whose frames expired in an outage longer than that is sent again by the
# runner's stall check. (Tansu, the local broker, ignores retention: docs/operations.md.)
TOPIC_CONFIGS = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
FRAME_TOPIC_CONFIGS = {**TOPIC_CONFIGS, "retention.ms": str(6 * 3600 * 1000), "segment.ms": str(3600 * 1000)}


async def ensure_topics(settings: Settings) -> None:
    """Create the pipeline's topics if they are missing (idempotent). A topic the broker refuses
    (`create_topics` answers with an error code per topic, it does not raise) raises TopicsRefused."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await on_startup(admin.start)()
        existing = set(await admin.list_topics())
        missing = [settings.topic(name) for name in topics.ALL if settings.topic(name) not in existing]
        if not missing:
            return
        replicas = settings.kafka_replication_factor
        partitions = settings.kafka_partitions
        frames = settings.topic(topics.INFERENCE_TASKS)
        new = [NewTopic(name, num_partitions=partitions, replication_factor=replicas,
                        topic_configs=FRAME_TOPIC_CONFIGS if name == frames else TOPIC_CONFIGS)
               for name in missing]  # fmt: skip
        if refused := refused_topics(await admin.create_topics(new)):
            raise TopicsRefused(refused)
        log.info("kafka topics created", topics=missing, partitions=partitions, replication_factor=replicas)
    finally:
        await admin.close()


class TopicsRefused(RuntimeError):
    def __init__(self, refused: dict[str, str]) -> None:
        self.refused = refused
        super().__init__("the broker refused to create topics: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))


def refused_topics(answer: Any) -> dict[str, str]:
    """The topics a CreateTopics answer refused, with the error (an existing topic is no refusal:
    another service created it first). The answer's rows are (topic, code) or (topic, code, message)."""
    refused = {}
    for topic, code, *message in answer.topic_errors:
        error = for_code(code) if code else None
        if error is not None and error is not TopicAlreadyExistsError:
            refused[topic] = f"{error.__name__}: {message[0] if message and message[0] else 'no message'}"
    return refused


def object_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "dir":
        return DirectoryStore(settings.storage_dir)
    if settings.minio_access_key is None or settings.minio_secret_key is None:
        raise ValueError("MINIO_ACCESS_KEY and MINIO_SECRET_KEY are required with STORAGE_BACKEND=s3")
    client = Minio(
        settings.minio_endpoint,
        access_key=settings.minio_access_key.get_secret_value(),
        secret_key=settings.minio_secret_key.get_secret_value(),
        secure=settings.minio_secure,
        region=settings.minio_region,
    )
    return S3Store(client)
