"""Crash points for the crash-recovery tests: SIGKILL this process at a named point of the work.

Only test runs set VDETECT_CRASH_AT ("<point>" or "<point>:<n>", the n-th time the point is passed);
without it `crash_point` returns at once.
"""

import os
import signal
from collections import Counter

ENV = "VDETECT_CRASH_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
