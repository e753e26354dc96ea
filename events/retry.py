"""Retry policies, one per kind of failure (tenacity: bounded, jittered)."""

from aiokafka.errors import KafkaConnectionError, KafkaError
from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)


def _retriable_kafka(error: BaseException) -> bool:
    return isinstance(error, KafkaConnectionError) or (isinstance(error, KafkaError) and error.retriable)


# Waiting for a server at start-up: a service may start before its dependencies.
on_startup = retry(
    retry=retry_if_exception_type((KafkaConnectionError, ConnectionFailure, OSError)),
    wait=wait_random_exponential(multiplier=0.2, max=3),
    stop=stop_after_delay(120),
    reraise=True,
)

# A passing outage of MongoDB or Kafka in the middle of work.
transient = retry(
    retry=retry_if_exception(
        lambda e: isinstance(e, AutoReconnect | NetworkTimeout | ConnectionFailure) or _retriable_kafka(e)
    ),
    wait=wait_random_exponential(multiplier=0.2, max=5),
    stop=stop_after_delay(60),
    reraise=True,
)
