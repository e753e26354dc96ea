"""The models one inference worker serves: its own default (MODEL_PATH) and, loaded on first use from
object storage by content hash (`models/{sha256}.onnx`), up to INFERENCE_MAX_MODELS others; the least
recently used is dropped when another is needed. Any worker serves any model: a frame message names
its model by hash, never by a name that could be pointed elsewhere meanwhile."""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from events.contracts import model_key
from events.log import get_logger
from events.modelfile import ModelError, sha256_of
from events.storage import ObjectStore
from inference.detector import Detector

log = get_logger(__name__)
REFUSED_FOR_S = 60.0  # a model that could not be loaded is not fetched again for this long


class Models:
    def __init__(self, default: Detector, default_sha256: str, load: Callable[[str], Awaitable[Detector]],
                 capacity: int) -> None:  # fmt: skip
        self.default, self.default_sha256 = default, default_sha256
        self.load, self.capacity = load, capacity
        self.loaded: OrderedDict[str, Detector] = OrderedDict()
        self.refused: dict[str, tuple[float, Exception]] = {}
        self.lock = asyncio.Lock()

    @classmethod
    def only(cls, detector: Detector) -> "Models":
        """A worker serving one model (its default) and no other."""

        async def refuse(sha256: str) -> Detector:
            raise ModelError(f"this worker serves only its default model, not {sha256}")

        return cls(detector, "", refuse, 1)

    async def get(self, sha256: str | None) -> Detector:
        """The detector of a model; the error of its load (ModelError, FileNotFoundError) if it cannot be."""
        if sha256 is None or sha256 == self.default_sha256:
            return self.default
        async with self.lock:
            if (detector := self.loaded.get(sha256)) is not None:
                self.loaded.move_to_end(sha256)
                return detector
            if (refused := self.refused.get(sha256)) is not None and time.monotonic() - refused[0] < REFUSED_FOR_S:
                raise refused[1]
            started = time.monotonic()
            try:
                detector = await self.load(sha256)
            except (ModelError, FileNotFoundError) as error:
                self.refused[sha256] = (time.monotonic(), error)
                log.error("model could not be loaded", model=sha256, error=str(error))
                raise
            self.refused.pop(sha256, None)
            self.loaded[sha256] = detector
            while len(self.loaded) > self.capacity:
                dropped, _ = self.loaded.popitem(last=False)
                log.info("model unloaded (least recently used)", model=dropped)
            log.info("model loaded", model=sha256, classes=len(detector.names),
                     seconds=round(time.monotonic() - started, 3), loaded=len(self.loaded))  # fmt: skip
            return detector


def loader(store: ObjectStore, bucket: str, build: Callable[[Path], Detector]) -> Callable[[str], Awaitable[Detector]]:
    """Load a model from storage by its hash, checking that the bytes are the ones named."""

    async def load(sha256: str) -> Detector:
        async with store.local_copy(bucket, model_key(sha256)) as path:
            if await asyncio.to_thread(sha256_of, path) != sha256:
                raise ModelError(f"the stored file {model_key(sha256)} does not match its hash")
            return await asyncio.to_thread(build, path)

    return load
