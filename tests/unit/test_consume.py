"""The consume loop with `settle`: the next batch is handled while the last one's sends are acknowledged,
and a batch is committed only once they are (a fake consumer: the loop is a port this project owns)."""

import asyncio
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from events.consume import Item, Loop

TOPIC = "tasks"


def message(offset: int, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, b"x", None, 1, 0, [])


class FakeConsumer:
    """Answers batches in order, then nothing; records what was committed."""

    def __init__(self, batches: list[list[ConsumerRecord]]) -> None:
        self.batches, self.commits = list(batches), []  # type: ignore[var-annotated]
        self.joined, self.topic, self.group = True, TOPIC, "group"
        self.assigned = {TopicPartition(m.topic, m.partition) for batch in batches for m in batch}

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


async def parse(messages: list[ConsumerRecord]) -> list[Any]:
    return [m.offset for m in messages]


async def never_rejected(*_: object) -> None:
    raise AssertionError("nothing is rejected here")


async def test_the_next_batch_is_handled_while_the_last_settles_and_each_is_committed_only_once_settled() -> None:
    consumer = FakeConsumer([[message(0), message(1, 1)], [message(2)], [message(3)]])
    acks = [asyncio.get_running_loop().create_future() for _ in range(3)]
    handled: list[list[int]] = []
    stop = asyncio.Event()

    async def fetch() -> list[ConsumerRecord]:
        await asyncio.sleep(0)
        if consumer.batches:
            return consumer.batches.pop(0)
        stop.set()
        return []

    async def handle(items: list[Item[Any]]) -> None:
        handled.append([offset for _, offset in items])
        if len(handled) == 2:  # the second batch is handled before the first is acknowledged
            assert consumer.commits == []
            acks[0].set_result(None)
        if len(handled) == 3:
            await asyncio.sleep(0.01)
            assert consumer.commits == [{TopicPartition(TOPIC, 0): 1, TopicPartition(TOPIC, 1): 2}]
            acks[1].set_result(None)
            acks[2].set_result(None)

    settled = iter(acks)
    loop: Loop[Any] = Loop(consumer, parse, handle, never_rejected, 2, fetch=fetch, settle=lambda: next(settled))  # type: ignore[arg-type]
    await asyncio.wait_for(loop.run(stop), 5)
    assert handled == [[0, 1], [2], [3]]
    assert consumer.commits == [
        {TopicPartition(TOPIC, 0): 1, TopicPartition(TOPIC, 1): 2},
        {TopicPartition(TOPIC, 0): 3},
        {TopicPartition(TOPIC, 0): 4},
    ]


async def test_a_batch_whose_sends_were_not_acknowledged_is_not_committed_when_the_loop_fails() -> None:
    consumer = FakeConsumer([[message(0)], [message(1)]])
    never = asyncio.get_running_loop().create_future()

    async def handle(items: list[Item[Any]]) -> None:
        if items[0][1] == 1:
            raise ConnectionError("the broker went away")  # infrastructure: the loop stops

    async def fetch() -> list[ConsumerRecord]:
        return consumer.batches.pop(0)

    loop: Loop[Any] = Loop(consumer, parse, handle, never_rejected, 1, fetch=fetch, settle=lambda: never)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(loop.run(asyncio.Event()), 5)
    assert consumer.commits == []  # both batches are delivered again


async def test_reading_ahead_the_next_batch_is_fetched_and_parsed_while_this_one_is_handled() -> None:
    consumer = FakeConsumer([[message(0)], [message(1)], [message(2)]])
    stop, events = asyncio.Event(), []

    async def fetch() -> list[ConsumerRecord]:
        batch = consumer.batches.pop(0) if consumer.batches else []
        events.append(f"fetched {batch[0].offset}" if batch else "fetched nothing")
        return batch

    async def parse_logged(messages: list[ConsumerRecord]) -> list[Any]:
        events.append(f"parsed {messages[0].offset}")
        return await parse(messages)

    async def handle(items: list[Item[Any]]) -> None:
        events.append(f"handling {items[0][1]}")
        await asyncio.sleep(0.01)  # the engine at work: the next batch is read meanwhile
        events.append(f"handled {items[0][1]}")
        if items[0][1] == 1:
            stop.set()  # batch 2 was read ahead, and is never handled

    async def settle() -> None:
        return None

    loop: Loop[Any] = Loop(consumer, parse_logged, handle, never_rejected, 1, fetch=fetch, settle=settle,  # type: ignore[arg-type]
                           read_ahead=True)  # fmt: skip
    await asyncio.wait_for(loop.run(stop), 5)
    assert events == ["fetched 0", "parsed 0", "handling 0", "fetched 1", "parsed 1", "handled 0",
                      "handling 1", "fetched 2", "parsed 2", "handled 1"]  # fmt: skip
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 1}, {TopicPartition(TOPIC, 0): 2}]  # not batch 2
