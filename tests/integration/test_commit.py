"""Committing across a rebalance, on Tansu: offsets of a partition taken away since its messages were read
(a batch read ahead, or settled, while a worker joined) are left to its new owner; the consumer goes on."""

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from events.clients import commit, ensure_topics, kafka_consumer, kafka_producer


async def assigned(consumers: list[AIOKafkaConsumer], each: int) -> None:
    """Poll until every consumer holds `each` partitions (a join takes about half the session on Tansu)."""
    async with asyncio.timeout(60):
        while any(len(consumer.assignment()) != each for consumer in consumers):
            await asyncio.gather(*(consumer.getmany(timeout_ms=200) for consumer in consumers))


async def test_offsets_of_a_partition_taken_away_are_left_to_its_new_owner(settings) -> None:
    await ensure_topics(settings)  # two partitions each (the tests' KAFKA_PARTITIONS)
    topic, group = "inference_tasks", "commit-test"
    async with kafka_producer(settings) as producer:
        for partition in (0, 1):
            await producer.send_and_wait(settings.topic(topic), b"frame", partition=partition)
    async with kafka_consumer(settings, topic, group, 10) as first:
        await assigned([first], 2)
        read_before = {TopicPartition(settings.topic(topic), partition): 1 for partition in (0, 1)}
        async with kafka_consumer(settings, topic, group, 10) as second:  # joins: the group rebalances
            await assigned([first, second], 1)
            (kept,) = first.assignment()
            await commit(first, read_before)  # aiokafka alone raises IllegalStateError: "not assigned"
            assert await first.committed(kept) == 1
            (taken,) = second.assignment()
            assert await second.committed(taken) is None  # left to the new owner, who reads it again
