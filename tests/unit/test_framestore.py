"""The frame store (`events.framestore`) on a real folder: what is written, read, let go and bounded."""

from pathlib import Path

import pytest

from events.contracts import InferenceTask
from events.framestore import FrameGone, FrameStore, frame_store
from events.ports import DEFAULT as PORTS
from vdetect.stack import frame_store_dir, stack_env


def frame(event_id: str = "job-1", index: int = 0, size: int = 6) -> InferenceTask:
    return InferenceTask(event_id=event_id, frame=index, image=bytes(range(size)), image_width=2, image_height=2)


def test_a_stored_frame_travels_as_its_header_and_is_read_back_whole(tmp_path: Path) -> None:
    store = FrameStore(tmp_path / "frames", 1024)
    sent = store.put(frame(index=5))
    assert sent.stored and sent.image == b""
    message = InferenceTask.from_bytes(sent.to_bytes())
    assert message.stored and message.image == b"" and message.frame == 5
    assert len(sent.to_bytes()) < 300  # the header alone
    assert store.read(message) == bytes(range(6))
    assert [path.name for path in (tmp_path / "frames" / "job-1").iterdir()] == ["5"]  # no temporary left
    assert (tmp_path / "frames").stat().st_mode & 0o777 == 0o700


def test_stored_results_discard_their_files_and_a_job_over_drops_its_folder(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, 1024)
    for index in range(3):
        store.put(frame(index=index))
    store.put(frame("job-2"))
    assert store.used == 24 and sorted(store.jobs()) == ["job-1", "job-2"]
    store.discard("job-1", [0, 1, 7])  # 7: never stored here (another runner's, or gone already)
    assert store.used == 12 and [p.name for p in (tmp_path / "job-1").iterdir()] == ["2"]
    with pytest.raises(FrameGone, match="frame 0 of job job-1 is no longer in the frame store"):
        store.read(frame(index=0))
    store.drop_job("job-1")
    assert store.used == 6 and store.jobs() == ["job-2"] and not (tmp_path / "job-1").exists()
    store.drop_job("job-never-seen")  # nothing to drop: nothing happens


def test_frames_travel_in_their_messages_beyond_the_limit_and_when_the_store_cannot_take_them(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, 10)
    assert store.put(frame(index=0)).stored
    over = store.put(frame(index=1))
    assert not over.stored and over.image == bytes(range(6))  # 12 bytes would pass 10
    store.discard("job-1", [0])
    assert store.put(frame(index=1)).stored  # room again
    store.max_bytes = 1024
    (tmp_path / "job-blocked").write_bytes(b"")  # a file where the job's folder should be: the write fails
    failed = store.put(frame("job-blocked"))
    assert not failed.stored and failed.image == bytes(range(6)) and store.full
    assert store.used == 6


def test_a_job_id_that_is_not_a_plain_name_never_reaches_the_filesystem(tmp_path: Path) -> None:
    store = FrameStore(tmp_path / "frames", 1024)
    for hostile in ("../escape", "a/b", "", "x" * 200):
        task = frame(hostile)
        with pytest.raises(ValueError, match="cannot name a folder"):
            store.put(task)
        with pytest.raises(ValueError, match="cannot name a folder"):
            store.read(task)
        store.discard(hostile, [0])
        store.drop_job(hostile)
    assert list(tmp_path.iterdir()) == [tmp_path / "frames"] and store.jobs() == []


def test_no_folder_no_store(tmp_path: Path) -> None:
    assert frame_store(None, 1024) is None
    (tmp_path / "file").write_bytes(b"")
    assert frame_store(tmp_path / "file" / "frames", 1024) is None  # cannot be made: frames use the broker


def test_the_local_stack_hands_frames_over_in_memory_one_folder_per_stack(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FRAME_STORE_DIR", raising=False)
    one, other = frame_store_dir(tmp_path / "a"), frame_store_dir(tmp_path / "b")
    assert one != other and one.parent == Path("/dev/shm") and one == frame_store_dir(tmp_path / "a")
    assert stack_env(tmp_path / "a", PORTS)["FRAME_STORE_DIR"] == str(one)
    monkeypatch.setenv("FRAME_STORE_DIR", "")  # through the broker, as `FRAME_STORE_DIR= vdetect up` asks
    assert stack_env(tmp_path / "a", PORTS)["FRAME_STORE_DIR"] == ""
