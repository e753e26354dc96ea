"""Where the runner sends a job's frames: the partition where the fewest of them wait for a result; and
when: a frame goes out once it is encoded."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiokafka.structs import RecordMetadata

from events.contracts import InferenceTask
from events.settings import Settings
from runner import publish as publish_module
from runner.lifecycle import Stats
from runner.publish import Flow, Outgoing, Publisher
from tests.servers import bikes_video

PARTITIONS = [0, 1, 2, 3]


def publish(flow: Flow, frames: range) -> list[int]:
    placed = []
    for frame in frames:
        flow.published += 1
        placed.append(flow.place(frame, PARTITIONS))
    return placed


def test_frames_go_in_turn_while_every_partition_waits_as_long() -> None:
    flow = Flow(stored_before=0)
    assert publish(flow, range(0, 40, 5)) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_partition_whose_worker_falls_behind_gets_fewer_frames_until_it_catches_up() -> None:
    flow = Flow(stored_before=0)
    placed = dict(zip(range(8), publish(flow, range(8)), strict=True))
    fast = [frame for frame, partition in placed.items() if partition in (0, 1)]  # one worker's partitions
    flow.done(fast, len(fast))
    assert flow.stored == 4 and flow.changed.is_set()
    assert sorted(publish(flow, range(8, 12))) == [0, 0, 1, 1]  # the slow worker's 4 frames still wait
    flow.done([frame for frame, partition in placed.items() if partition in (2, 3)], 4)
    assert sorted(publish(flow, range(12, 16))) == [2, 2, 3, 3]


def test_results_counted_from_the_job_and_not_named_forget_the_oldest_frames() -> None:
    flow = Flow(stored_before=0)
    publish(flow, range(4))
    flow.stored = 2  # another runner stored two of them: read from the job, not named
    publish(flow, range(4, 5))
    assert list(flow.waiting) == [2, 3, 4]


def test_a_result_given_twice_or_for_a_frame_not_waiting_changes_nothing() -> None:
    flow = Flow(stored_before=0)
    publish(flow, range(2))
    flow.done([0], 1)
    flow.done([0, 99], 0)
    assert flow.stored == 1 and list(flow.waiting) == [1]


class RecordingProducer:
    """Where the frames went and when: a stand-in for the Kafka producer, recording each send."""

    def __init__(self, events: list[str]) -> None:
        self.events, self.offset = events, 0

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> asyncio.Future[RecordMetadata]:
        self.events.append(f"sent {InferenceTask.from_bytes(value).frame}")
        self.offset += 1
        sent: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        sent.set_result(RecordMetadata(topic, partition, None, self.offset, 0, 0, 0))
        return sent


@pytest.mark.parametrize(("encoding", "sent_before_next"), [("i420", True), ("jpeg", False)])
def test_a_raw_frame_goes_out_as_soon_as_it_is_decoded(monkeypatch, encoding: str, sent_before_next: bool) -> None:
    """A raw frame needs no encoding: it is sent before the next frame is taken from the decoder, so a
    job's first frames reach the workers without waiting for the encoding window to fill."""
    events: list[str] = []
    read_ahead = publish_module.read_ahead

    async def recording(frames, depth: int):  # noqa: ANN001, ANN202
        async for frame in read_ahead(frames, depth):
            events.append(f"taken {frame.index}")
            yield frame

    monkeypatch.setattr(publish_module, "read_ahead", recording)
    settings = Settings(frame_encoding=encoding)

    async def publish_video() -> int:
        flow = Flow(stored_before=0)
        with ThreadPoolExecutor(2) as pool:
            publisher = Publisher(None, None, pool, settings, Stats())  # type: ignore[arg-type]
            out = Outgoing(RecordingProducer(events), "tasks", "job", [0, 1], {}, None, flow)
            return await publisher.send_all(bikes_video(), "job", flow, out, frozenset())

    assert asyncio.run(publish_video()) == 50  # 250 frames, every fifth
    taken = [event for event in events if event.startswith("taken")]
    assert [event.replace("taken", "sent") for event in taken] == [e for e in events if e.startswith("sent")]
    assert (events[:4] == ["taken 0", "sent 0", "taken 5", "sent 5"]) == sent_before_next
