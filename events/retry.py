"""Retry policies, one per kind of failure (tenacity: bounded, jittered)."""

from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError, UnknownError
from minio.error import S3Error, ServerError
from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from urllib3.exceptions import HTTPError as Urllib3Error

# S3 answers that say "not now" rather than "never".
S3_RETRIABLE = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "OperationAborted"}


def _retriable_kafka(error: BaseException) -> bool:
    return isinstance(error, KafkaConnectionError) or (isinstance(error, KafkaError) and error.retriable)


def _retriable_storage(error: BaseException) -> bool:
    """Storage unreachable or overloaded: a network error, a 5xx, or "slow down"."""
    return isinstance(error, ServerError | Urllib3Error | ConnectionError) or (
        isinstance(error, S3Error) and error.code in S3_RETRIABLE
    )


def _transient(error: BaseException) -> bool:
    return (
        isinstance(error, AutoReconnect | NetworkTimeout | ConnectionFailure)
        or _retriable_kafka(error)
        or _retriable_storage(error)
    )


def is_infrastructure(error: BaseException) -> bool:
    """An outage of MongoDB, Kafka or storage, or any error the broker answers (a message too large
    is the message's fault, not the broker's): retried where it happened, and if it lasts, the
    process stops (and is restarted) rather than failing the job or dead-lettering the message."""
    kafka = isinstance(error, KafkaError) and not isinstance(error, MessageSizeTooLargeError)
    return _transient(error) or kafka


# Waiting for a server at start-up: a service may start before its dependencies.
on_startup = retry(
    retry=retry_if_exception_type((KafkaConnectionError, ConnectionFailure, OSError)),
    wait=wait_random_exponential(multiplier=0.2, max=3),
    stop=stop_after_delay(120),
    reraise=True,
)

# A passing outage of MongoDB, Kafka or storage in the middle of work.
transient = retry(
    retry=retry_if_exception(_transient),
    wait=wait_random_exponential(multiplier=0.2, max=5),
    stop=stop_after_delay(60),
    reraise=True,
)

# A send the broker answered with an unknown error (-1): Tansu's answer to two producers racing for a
# partition's next batch right after it restarted empty. aiokafka does not retry it; sent again a few
# times, then the error stands (and the service handles it as any broker error).
UNKNOWN_ANSWER_RESENDS = 4
after_unknown_answer = retry(
    retry=retry_if_exception_type(UnknownError),
    wait=wait_random_exponential(multiplier=0.1, max=1),
    stop=stop_after_attempt(UNKNOWN_ANSWER_RESENDS),
    reraise=True,
)
