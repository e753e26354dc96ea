"""Kafka clients whose start never succeeds are still closed: a service stopped while it waits for
Kafka at startup leaves no unclosed client behind (aiokafka logs "Unclosed AIOKafka..." whenever such
a client is collected, in whatever runs then)."""

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError, UnknownError

from events import clients, topics
from events.clients import ensure_topics, group_offsets, kafka_consumer, kafka_producer
from events.retry import UNKNOWN_ANSWER_RESENDS
from events.settings import Settings

NOWHERE = Settings(kafka_bootstrap_servers="127.0.0.1:9")  # nothing listens on the discard port


async def topics_ensured() -> None:
    await ensure_topics(NOWHERE)


class Using:
    """`async with` one of the clients."""

    def __init__(self, client: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self.client = client

    async def __call__(self) -> None:
        async with self.client():
            pytest.fail("Kafka answered on the discard port")


@pytest.mark.parametrize(
    "use",
    [
        Using(lambda: kafka_producer(NOWHERE)),
        Using(lambda: kafka_consumer(NOWHERE, topics.INFERENCE_TASKS, "group")),
        Using(lambda: group_offsets(NOWHERE, topics.INFERENCE_TASKS, "group")),
        topics_ensured,
    ],
    ids=["producer", "consumer", "group_offsets", "ensure_topics"],
)
async def test_a_client_cancelled_while_it_waits_for_kafka_is_closed(
    use: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    closed: list[object] = []

    def recording(into: list[object], method: Callable[..., Any]) -> Callable[..., Any]:
        async def recorded(self: object) -> Any:
            into.append(self)
            return await method(self)

        return recorded

    for cls, start, stop in [
        (AIOKafkaProducer, "start", "stop"),
        (AIOKafkaConsumer, "start", "stop"),
        (AIOKafkaAdminClient, "start", "close"),
    ]:
        monkeypatch.setattr(cls, start, recording(started, getattr(cls, start)))
        monkeypatch.setattr(cls, stop, recording(closed, getattr(cls, stop)))

    task = asyncio.create_task(use())
    await asyncio.sleep(0.5)  # a few connection attempts
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started and {id(c) for c in started} <= {id(c) for c in closed}


class Answers:
    """Stands in for aiokafka's own send: each message's delivery fails with the next error given, then
    succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.sent = list(errors), 0

    async def __call__(self, topic: str, *args: Any, **options: Any) -> asyncio.Future[str]:
        self.sent += 1
        delivery: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.errors:
            delivery.set_exception(self.errors.pop(0))
        else:
            delivery.set_result(f"{topic} acknowledged")
        return delivery


@pytest.mark.parametrize(
    ("errors", "sent", "raised"),
    [
        ([UnknownError(), UnknownError()], 3, None),  # Tansu's answer to a race: sent again
        ([UnknownError()] * (1 + UNKNOWN_ANSWER_RESENDS), 1 + UNKNOWN_ANSWER_RESENDS, UnknownError),  # it lasts
        ([KafkaTimeoutError()], 1, KafkaTimeoutError),  # any other error is the service's to handle, as before
    ],
    ids=["recovers", "gives_up", "other_errors"],
)
async def test_a_send_answered_with_an_unknown_error_is_sent_again(
    errors: list[Exception], sent: int, raised: type[Exception] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(errors)
    monkeypatch.setattr(AIOKafkaProducer, "send", answers)
    producer = clients.Producer(bootstrap_servers=NOWHERE.kafka_bootstrap_servers)
    try:  # send_and_wait passes send's arguments by position
        if raised is None:
            assert await producer.send_and_wait("results", b"x", b"key") == "results acknowledged"
        else:
            with pytest.raises(raised):
                await producer.send_and_wait("results", b"x", b"key")
    finally:
        await producer.stop()
    assert answers.sent == sent
