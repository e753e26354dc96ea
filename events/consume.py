"""The one consume loop: fetch, parse, handle, isolate what fails, commit.

At least once: offsets are committed only after every message of the batch was handled or rejected.
A service whose handling ends with sends to Kafka may give `settle` (what waits for those sends to be
acknowledged): the loop then handles the next batch while the last one settles and is committed, so
the CPU does not idle through the round trips to the broker. With `read_ahead`, the next batch is
also fetched and parsed while this one is handled (an inference worker's engine then never waits
for its next frames to be read and converted); a batch read ahead is committed only once handled.
A message whose handling raises is rejected alone (dead-lettered, and accounted for in its job by
the service), and the loop goes on with the next one. Only infrastructure errors (MongoDB, Kafka or
storage unreachable; `events.retry.is_infrastructure`), already retried where they happened, stop
the loop, so the process exits and is restarted rather than throwing work away.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiokafka.structs import ConsumerRecord, TopicPartition

from events import metrics
from events.clients import Consumer, commit, next_offsets, records
from events.retry import is_infrastructure

T = TypeVar("T")
Item = tuple[ConsumerRecord[bytes, bytes], T]
Fetch = Callable[[], Awaitable[list[ConsumerRecord]]]
Parse = Callable[[list[ConsumerRecord]], Awaitable[list[T | Exception]]]
Handle = Callable[[list[Item[T]]], Awaitable[None]]
# (message, its parsed form or None if it did not parse, the error)
Reject = Callable[[ConsumerRecord, T | None, Exception], Awaitable[None]]
# called right after a batch was handled: an awaitable that is done when that batch's sends are acknowledged
Settle = Callable[[], Awaitable[Any]]
Read = tuple[list[ConsumerRecord], list[T | Exception]]  # a batch and its parsed forms
LAG_INTERVAL_S = 2.0


async def topped_up(consumer: Consumer, size: int, linger_ms: int) -> list[ConsumerRecord]:
    """Up to `size` messages: what is there now (waiting up to 500 ms for the first), topped up for at
    most `linger_ms`: fewer and larger batches where each batch costs a round trip or a write."""
    messages = records(await consumer.getmany(timeout_ms=500, max_records=size))
    if messages and len(messages) < size and linger_ms > 0:
        messages += records(await consumer.getmany(timeout_ms=linger_ms, max_records=size - len(messages)))
    return messages


class Loop(Generic[T]):
    def __init__(
        self,
        consumer: Consumer,
        parse: Parse[T],
        handle: Handle[T],
        reject: Reject[T],
        max_records: int,
        fetch: Fetch | None = None,
        settle: Settle | None = None,
        linger_ms: int = 0,
        read_ahead: bool = False,
    ) -> None:
        self.consumer, self.parse, self.handle, self.reject = consumer, parse, handle, reject
        self.settle, self.read_ahead = settle, read_ahead
        self.fetch = fetch or self.fetch_available
        self.max_records, self.linger_ms = max_records, linger_ms
        self.lag_measured_at = 0.0
        metrics.start_at_zero(metrics.DEAD_LETTERS, {"topic": consumer.topic})
        metrics.start_at_zero(metrics.CONSUMER_LAG, {"topic": consumer.topic, "group": consumer.group})

    async def fetch_available(self) -> list[ConsumerRecord]:
        return await topped_up(self.consumer, self.max_records, self.linger_ms)

    @property
    def joined(self) -> bool:
        """Joined the consumer group (with partitions or without: a member beyond them waits its turn)."""
        return self.consumer.joined

    async def run(self, stop: asyncio.Event) -> None:
        settling: asyncio.Task[None] | None = None  # the last batch: its sends acknowledged, then committed
        ahead: asyncio.Task[Read[T]] | None = None  # the next batch, fetched and parsed while this one is handled
        try:
            while not stop.is_set():
                messages, parsed = await (ahead or self.fetch_parsed())
                ahead = asyncio.create_task(self.fetch_parsed()) if messages and self.read_ahead else None
                if messages:
                    await self.handle_batch(messages, parsed)
                    if self.settle is None:
                        await commit(self.consumer, next_offsets(messages))
                    else:
                        if settling is not None:
                            await settling
                        settling = asyncio.create_task(self.commit_settled(self.settle(), next_offsets(messages)))
                await self.measure_lag()
        except BaseException:
            for task in (settling, ahead):  # not committed: delivered again (handlers are idempotent)
                if task is not None:
                    task.cancel()
            raise
        if ahead is not None:
            ahead.cancel()  # read, not handled: not committed, delivered again
            await asyncio.gather(ahead, return_exceptions=True)
        if settling is not None:
            await settling

    async def fetch_parsed(self) -> Read[T]:
        messages = await self.fetch()
        return messages, await self.parse(messages) if messages else []

    async def commit_settled(self, settled: Awaitable[Any], offsets: dict[TopicPartition, int]) -> None:
        await settled
        await commit(self.consumer, offsets)

    async def measure_lag(self) -> None:
        """`vdetect_consumer_lag`: messages in this consumer's partitions it has not consumed yet,
        measured at most every LAG_INTERVAL_S; it never gets in the way of consuming."""
        if time.monotonic() - self.lag_measured_at < LAG_INTERVAL_S:
            return
        self.lag_measured_at = time.monotonic()
        lag: dict[str, int] = {}
        try:
            async with asyncio.timeout(1):
                for partition in self.consumer.assignment():
                    end = self.consumer.highwater(partition)
                    if end is not None:
                        behind = end - await self.consumer.position(partition)
                        lag[partition.topic] = lag.get(partition.topic, 0) + max(behind, 0)
        except Exception:  # noqa: BLE001 - a rebalance under way: measured next time
            return
        for topic, behind in lag.items():
            metrics.CONSUMER_LAG.labels(topic=topic, group=self.consumer.group).set(behind)

    async def handle_batch(self, messages: list[ConsumerRecord], parsed_all: list[T | Exception]) -> None:
        items: list[Item[T]] = []
        for message, parsed in zip(messages, parsed_all, strict=True):
            if isinstance(parsed, Exception):
                await self.reject(message, None, parsed)
            else:
                items.append((message, parsed))
        if items:
            await isolate(items, self.handle, self.reject)


async def isolate(items: list[Item[T]], handle: Handle[T], reject: Reject[T]) -> None:
    """Handle the batch; if that fails (not for infrastructure), handle the items one by one and reject
    each that still fails. Handlers are idempotent, so items handled before the failure are safe."""
    try:
        await handle(items)
        return
    except Exception as error:
        if is_infrastructure(error):
            raise
        if len(items) == 1:
            await reject(items[0][0], items[0][1], error)
            return
    for item in items:
        try:
            await handle([item])
        except Exception as error:
            if is_infrastructure(error):
                raise
            await reject(item[0], item[1], error)


def parse_with(contract: Callable[[bytes], T]) -> Parse[T]:
    """A parser for small JSON messages, each parsed on the event loop."""

    async def parse(messages: list[ConsumerRecord]) -> list[T | Exception]:
        parsed: list[T | Exception] = []
        for message in messages:
            try:
                parsed.append(contract(message.value))
            except ValueError as error:  # pydantic's ValidationError is a ValueError
                parsed.append(error)
        return parsed

    return parse
