"""Object storage port with two adapters: a local directory (the local stack) and S3 (MinIO or any S3).

Keys are always built by the services from validated ids (`input/{id}.mp4`, `detection/{id}.json`).
Both adapters write atomically: a reader sees a whole object or none.
"""

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Protocol

from minio import Minio
from minio.error import S3Error

COPY_CHUNK = 1024 * 1024
S3_PART_SIZE = 16 * 1024 * 1024
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}


class ObjectStore(Protocol):
    async def ensure_bucket(self, bucket: str) -> None: ...
    async def put_file(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str) -> int: ...
    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...
    async def get_bytes(self, bucket: str, key: str) -> bytes | None: ...
    async def modified_at(self, bucket: str, key: str) -> datetime | None: ...
    async def list_prefix(self, bucket: str, prefix: str) -> dict[str, datetime]: ...
    async def delete_prefix(self, bucket: str, prefix: str) -> int: ...
    async def buckets(self) -> list[str]: ...
    def local_copy(self, bucket: str, key: str) -> AbstractAsyncContextManager[Path]:
        """A path to the object's bytes on this machine, valid inside the `async with`."""
        ...


class DirectoryStore:
    """Buckets are folders under `root`; an object is a file at `root/bucket/key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"object key escapes the storage root: {bucket}/{key}")
        return path

    async def ensure_bucket(self, bucket: str) -> None:
        await asyncio.to_thread((self.root / bucket).mkdir, parents=True, exist_ok=True)

    def _write_atomically(self, path: Path, fileobj: BinaryIO) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, COPY_CHUNK)
                size = out.tell()
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    async def put_file(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str) -> int:
        return await asyncio.to_thread(self._write_atomically, self._path(bucket, key), fileobj)

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write_atomically, self._path(bucket, key), BytesIO(data))

    async def get_bytes(self, bucket: str, key: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(bucket, key).read_bytes)
        except FileNotFoundError:
            return None

    async def modified_at(self, bucket: str, key: str) -> datetime | None:
        try:
            stat = await asyncio.to_thread(self._path(bucket, key).stat)
        except FileNotFoundError:
            return None
        return datetime.fromtimestamp(stat.st_mtime, UTC)

    async def list_prefix(self, bucket: str, prefix: str) -> dict[str, datetime]:
        def scan() -> dict[str, datetime]:
            base = self.root / bucket
            folder = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
            if not folder.is_dir():
                return {}
            found = {}
            for path in folder.rglob("*"):
                key = path.relative_to(base).as_posix()
                if path.is_file() and key.startswith(prefix) and not path.name.startswith(".part-"):
                    found[key] = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            return found

        return await asyncio.to_thread(scan)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = await self.list_prefix(bucket, prefix)
        for key in keys:
            await asyncio.to_thread(self._path(bucket, key).unlink, missing_ok=True)
        return len(keys)

    async def buckets(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    @asynccontextmanager
    async def local_copy(self, bucket: str, key: str) -> AsyncIterator[Path]:
        path = self._path(bucket, key)
        if not path.is_file():
            raise FileNotFoundError(f"{bucket}/{key}")
        yield path


class S3Store:
    """Any S3-compatible store through the MinIO SDK (its blocking calls run in threads)."""

    def __init__(self, client: Minio) -> None:
        self.client = client

    async def ensure_bucket(self, bucket: str) -> None:
        if not await asyncio.to_thread(self.client.bucket_exists, bucket):
            try:
                await asyncio.to_thread(self.client.make_bucket, bucket)
            except S3Error as error:
                if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    async def put_file(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str) -> int:
        result = await asyncio.to_thread(
            self.client.put_object, bucket, key, fileobj, -1, content_type=content_type, part_size=S3_PART_SIZE
        )
        stat = await asyncio.to_thread(self.client.stat_object, bucket, result.object_name)
        return stat.size or 0

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(
            self.client.put_object, bucket, key, BytesIO(data), len(data), content_type=content_type
        )

    async def get_bytes(self, bucket: str, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                response = self.client.get_object(bucket, key)
            except S3Error as error:
                if error.code in MISSING_CODES:
                    return None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(read)

    async def modified_at(self, bucket: str, key: str) -> datetime | None:
        try:
            stat = await asyncio.to_thread(self.client.stat_object, bucket, key)
        except S3Error as error:
            if error.code in MISSING_CODES:
                return None
            raise
        return stat.last_modified

    async def list_prefix(self, bucket: str, prefix: str) -> dict[str, datetime]:
        def scan() -> dict[str, datetime]:
            try:
                return {
                    obj.object_name: obj.last_modified
                    for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                    if obj.object_name and obj.last_modified
                }
            except S3Error as error:
                if error.code in MISSING_CODES:
                    return {}
                raise

        return await asyncio.to_thread(scan)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = await self.list_prefix(bucket, prefix)
        for key in keys:
            await asyncio.to_thread(self.client.remove_object, bucket, key)
        return len(keys)

    async def buckets(self) -> list[str]:
        return [b.name for b in await asyncio.to_thread(self.client.list_buckets)]

    @asynccontextmanager
    async def local_copy(self, bucket: str, key: str) -> AsyncIterator[Path]:
        with tempfile.TemporaryDirectory(prefix="vdetect-") as folder:
            path = Path(folder) / Path(key).name
            try:
                await asyncio.to_thread(self.client.fget_object, bucket, key, str(path))
            except S3Error as error:
                if error.code in MISSING_CODES:
                    raise FileNotFoundError(f"{bucket}/{key}") from error
                raise
            yield path
