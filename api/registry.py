"""The models jobs may name: `main_db.models` (one document per name) over files in object storage by
content hash (`models/{sha256}.onnx`). The API is the only writer: an import is inspected here (its
layout, classes and input size, `events.modelfile`), stored, then named; the built-in model is
registered at start under DEFAULT_MODEL's name. A job takes the name's hash when it is accepted, so it
keeps its model even if the name is pointed at another file later."""

import asyncio
from pathlib import Path

from pymongo.asynchronous.collection import AsyncCollection

from events.contracts import ModelDocument, ModelRef, ModelSource, model_key, utcnow
from events.log import get_logger
from events.modelfile import inspect, sha256_of
from events.retry import transient
from events.storage import ObjectStore

log = get_logger(__name__)
MAX_LISTED = 1000  # `GET /api/models` answers at most this many


class UnknownModel(LookupError):
    """No model has this name."""


class ModelRegistry:
    def __init__(self, collection: AsyncCollection, store: ObjectStore, bucket: str, default: str) -> None:
        self.collection, self.store, self.bucket, self.default = collection, store, bucket, default

    @transient
    async def all(self) -> list[ModelDocument]:
        cursor = self.collection.find({}).sort("_id", 1).limit(MAX_LISTED)
        return [ModelDocument.model_validate(doc) async for doc in cursor]

    @transient
    async def resolve(self, name: str | None) -> ModelRef | None:
        """The model a job runs: the one named (UnknownModel if none has the name), or the default (None
        when it is not registered: the workers run their own)."""
        doc = await self.collection.find_one({"_id": name or self.default}, {"sha256": 1})
        if doc is None and name:
            raise UnknownModel(name)
        if doc is None:
            return None
        name = name or self.default
        return ModelRef(name=name, sha256=doc["sha256"])

    async def register(self, name: str, path: Path, source: ModelSource, builtin: bool = False,
                       sha256: str | None = None) -> ModelDocument:  # fmt: skip
        """Inspect a model file (ModelError if the workers cannot serve it), store it by hash, then point
        the name at it. The built-in model only takes its name if it is free or still the built-in."""
        info = await asyncio.to_thread(inspect, path)
        if sha256 is None:  # the caller's, when it hashed the file already
            sha256 = await asyncio.to_thread(sha256_of, path)
        with path.open("rb") as file:
            await self.store.put_if_absent(self.bucket, model_key(sha256), file, "application/octet-stream")
        size = (await asyncio.to_thread(path.stat)).st_size
        doc = ModelDocument(id=name, sha256=sha256, bucket=self.bucket, classes=list(info.names), imgsz=info.imgsz,
                            stride=info.stride,
                            layout=info.layout, bytes=size, source=source, created_at=utcnow())  # fmt: skip
        if builtin and await self.taken_by_user(name):
            log.info("the default model's name is a user's import: the built-in model is stored, not named", model=name)
            return doc
        await transient(self.collection.replace_one)({"_id": name}, doc.to_mongo(), upsert=True)
        log.info("model registered", model=name, sha256=sha256, layout=info.layout, classes=len(info.names))
        return doc

    @transient
    async def taken_by_user(self, name: str) -> bool:
        return (
            await self.collection.find_one({"_id": name, "source.format": {"$ne": "builtin"}}, {"_id": 1}) is not None
        )

    async def register_builtin(self, path: Path) -> None:
        """The model the package ships (MODEL_PATH), under DEFAULT_MODEL's name unless a user took it."""
        sha256 = await asyncio.to_thread(sha256_of, path)
        source = ModelSource(format="builtin", file=path.name, sha256=sha256)
        await self.register(self.default, path, source, builtin=True, sha256=sha256)
