"""Fuzz the runner's video path (open, probe, sample, decode) with atheris: mutated mp4, mkv, avi, ts and webm.

    pip install atheris
    python scripts/fuzz_frames.py -max_total_time=300 -rss_limit_mb=2048 -timeout=20

Every input must end as frames or a VideoError: anything else is a crash, written by libFuzzer as
`crash-*`. With FUZZ_STRICT=1, a VideoError made of another exception (an IndexError of the demuxer,
say: what stopped the runner before) counts as a crash too, to find the inputs that need that net.
Keep what it finds in tests/data/fuzz/ (tests/unit/test_fuzz_corpus.py replays that folder).
"""

import os
import sys
import tempfile
from pathlib import Path

import atheris
import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: runner/, tests/

with atheris.instrument_imports():
    from runner.frames import VideoError, sample_frames, video_info

from tests.hostile import seed_videos  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="fuzz-frames-"))
FILE = WORK / "input"
STRICT = os.environ.get("FUZZ_STRICT") == "1"


def one_input(data: bytes) -> None:
    FILE.write_bytes(data)
    try:
        video_info(FILE)
        for _ in sample_frames(FILE, 1, 64, max_frames=2000):
            pass
    except VideoError as error:
        if STRICT and error.__cause__ is not None and not isinstance(error.__cause__, av.FFmpegError | VideoError):
            raise


def main() -> None:
    corpus = WORK / "corpus"
    corpus.mkdir()
    for name, data in seed_videos(hostile=not STRICT).items():
        (corpus / name).write_bytes(data)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
