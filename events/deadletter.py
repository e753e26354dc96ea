"""Poison messages: park them on the dead-letter topic with the error and their origin, then move on."""

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from events import metrics, topics
from events.contracts import DeadLetter
from events.log import get_logger
from events.settings import Settings

log = get_logger(__name__)


async def dead_letter(
    producer: AIOKafkaProducer, settings: Settings, service: str, message: ConsumerRecord, error: Exception
) -> None:
    letter = DeadLetter(
        service=service,
        error=f"{type(error).__name__}: {error}"[:2000],
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key.decode(errors="replace") if message.key else None,
        value=(message.value or b"").decode(errors="replace")[:100_000],
    )
    await producer.send_and_wait(settings.topic(topics.DEAD_LETTERS), letter.to_bytes(), key=message.key)
    metrics.DEAD_LETTERS.labels(topic=message.topic).inc()
    log.error(
        "message dead-lettered",
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        error=letter.error,
        dead_letters=1,
    )
