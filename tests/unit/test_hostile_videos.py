"""The video path (probe, open, sample, decode) against crafted and mutated files: each ends as frames or
a VideoError, within bounded memory, never as another exception (which stopped the runner before)."""

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.frames import VideoError, sample_frames
from runner.probe import probe
from tests import hostile

ROOT = Path(__file__).resolve().parent.parent.parent
FUZZ_CORPUS = ROOT / "tests" / "data" / "fuzz"


def in_child(script: str) -> str:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT).stdout


def decode_all(path: Path) -> int:
    """Frames sampled, or -1 for a VideoError; any other exception fails the test."""
    try:
        return len(list(sample_frames(path, 1, 64, max_frames=5000)))
    except VideoError:
        return -1


def test_a_stream_that_appears_after_the_probe_is_a_video_error_not_an_index_error(tmp_path: Path) -> None:
    path = tmp_path / "two.ts"
    path.write_bytes(hostile.two_programs_ts())
    with pytest.raises(VideoError, match="could not be decoded"):
        list(sample_frames(path, 1))


def test_frames_larger_than_the_header_declared_are_refused_without_being_held(tmp_path: Path) -> None:
    wide, huge = tmp_path / "wide.mp4", tmp_path / "huge.mp4"
    wide.write_bytes(hostile.larger_than_declared(8200, 1000))
    with pytest.raises(VideoError, match="a frame is 8200x1000 pixels"):
        list(sample_frames(wide, 5, 640))  # frame 1 is not even sampled: every decoded frame is checked
    # 256 megapixels (860 MB decoded before), made and decoded in processes of their own: peaks apart
    in_child(f"from tests import hostile; open({str(huge)!r}, 'wb').write(hostile.larger_than_declared(16000, 16000))")
    shapes, peak = in_child(f"""
import re
from pathlib import Path
from runner.frames import sample_frames
frames = list(sample_frames(Path({str(huge)!r}), 1, 640))
peak_kb = re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]  # this process's own peak
print([(frame.width, frame.height) for frame in frames], int(peak_kb) // 1024)
""").rsplit(" ", 1)
    assert shapes == "[(64, 48)]"  # the decoder refused the others
    assert int(peak) < 300, f"decoding took {peak} MB"


def test_a_video_holding_more_frames_than_the_limit_stops_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "thirty.mp4"
    path.write_bytes(hostile.mjpeg_mp4([hostile.jpeg(64, 48, i) for i in range(30)], (64, 48)))
    assert len(list(sample_frames(path, 1, max_frames=30))) == 30
    with pytest.raises(VideoError, match="more than the limit of 29 frames"):
        list(sample_frames(path, 1, max_frames=29))


def test_the_probe_reads_a_frame_bomb_in_a_bounded_process_and_says_what_it_declares(tmp_path: Path) -> None:
    path = tmp_path / "bomb.mp4"
    path.write_bytes(hostile.frame_bomb())  # 1 MB declaring 80 million frames: a 3 GB index in-process
    started = time.monotonic()
    info = asyncio.run(probe(path, 256, 60))
    assert info.frames == 80_000_000 and time.monotonic() - started < 10  # 3 GB and 12 s in-process before
    with pytest.raises(VideoError, match="declares 80000000 frames, more than the limit of 1000000"):
        info.check(1_000_000, 4 * 3600)


def test_the_probe_turns_a_file_that_is_not_a_video_into_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 100)
    with pytest.raises(VideoError, match="could not be opened as a video"):
        asyncio.run(probe(path, 256, 60))


def test_mutated_videos_of_every_container_end_as_frames_or_a_video_error(tmp_path: Path) -> None:
    """A seeded, quick version of scripts/fuzz_frames.py: byte flips, cuts and repeats of real files."""
    rng = random.Random(22)
    path = tmp_path / "mutated"
    outcomes = {"frames": 0, "refused": 0}
    for data in hostile.seed_videos().values():
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                at = rng.randrange(len(mutated))
                choice = rng.random()
                if choice < 0.6:
                    mutated[at] = rng.randrange(256)
                elif choice < 0.8:
                    del mutated[at : at + rng.randint(1, 64)]
                else:
                    mutated[at:at] = mutated[at : at + rng.randint(1, 64)]
            path.write_bytes(bytes(mutated))
            outcomes["frames" if decode_all(path) >= 0 else "refused"] += 1
    assert outcomes["frames"] and outcomes["refused"]  # both kinds of outcome were reached


def test_inputs_the_fuzzer_found_end_as_frames_or_a_video_error() -> None:
    found = sorted(FUZZ_CORPUS.glob("*"))
    assert found, "the fuzzer's findings are kept in tests/data/fuzz"
    for path in found:
        decode_all(path)
