"""Object storage port with two adapters: a local directory (the local stack) and S3 (MinIO or any S3).

Keys are always built by the services from validated ids (`input/{id}.mp4`, `detection/{id}.json`).
Both adapters write atomically: a reader sees a whole object or none.

Errors come in two kinds. A missing object is `None` (or FileNotFoundError for `local_copy`). A
missing bucket, a refused access or an invalid key is a `PermanentStorageError`: it concerns the jobs
of that bucket or key, and trying again will not help. Anything else (network, 5xx) is transient:
the caller retries it (`events.retry.transient`) and never fails a job for it.
"""

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from minio import Minio
from minio.error import S3Error

R = TypeVar("R")
COPY_CHUNK = 1024 * 1024
RANGE_CHUNK = 256 * 1024
S3_PART_SIZE = 16 * 1024 * 1024
MAX_NAME_BYTES = 255  # a file name's (ENAMETOOLONG beyond)
MISSING_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
# Answers about one bucket or key that no retry can change. Wrong credentials are not among them:
# they concern every job, so they stop the service (after retries) instead of failing jobs one by one.
PERMANENT_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidBucketName": "invalid bucket name",
    "InvalidObjectName": "invalid object key",
    "KeyTooLongError": "invalid object key",
}


class PermanentStorageError(Exception):
    """An operation on one bucket or key that will never succeed: fail the job it belongs to."""

    def __init__(self, bucket: str, key: str | None, reason: str) -> None:
        self.bucket, self.key, self.reason = bucket, key, reason
        where = f"{bucket}/{key}" if key else bucket
        super().__init__(f"storage refused {where}: {reason}")


def _from_s3(error: S3Error, bucket: str, key: str | None) -> Exception:
    reason = PERMANENT_CODES.get(error.code or "")
    return PermanentStorageError(bucket, key, reason) if reason else error


class ObjectStore(Protocol):
    """Objects in buckets. A missing object is None (or False), never an error; a bucket that cannot
    be used raises PermanentStorageError; an unreachable store raises what `events.retry` retries."""

    async def ensure_bucket(self, bucket: str) -> None: ...
    async def put_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> int: ...
    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...
    async def put_if_absent(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> bool:
        """Write the object unless it exists; True if this call wrote it."""
        ...

    async def exists(self, bucket: str, key: str) -> bool: ...
    async def delete(self, bucket: str, key: str) -> bool:
        """Remove one object; True if it was there."""
        ...

    async def get_bytes(self, bucket: str, key: str) -> bytes | None: ...
    async def modified_at(self, bucket: str, key: str) -> datetime | None: ...
    async def list_prefix(self, bucket: str, prefix: str) -> dict[str, datetime]: ...
    async def size(self, bucket: str, key: str) -> int | None: ...
    def read_range(self, bucket: str, key: str, start: int, length: int) -> AsyncIterator[bytes]: ...
    def local_copy(self, bucket: str, key: str) -> AbstractAsyncContextManager[Path]:
        """A path to the object's bytes on this machine, valid inside the `async with`."""
        ...


class DirectoryStore:
    """Buckets are folders under `root`; an object is a file at `root/bucket/key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, bucket: str, key: str) -> Path:
        """The object's file; PermanentStorageError if the key escapes the root or the bucket is gone."""
        if any(len(part.encode()) > MAX_NAME_BYTES for part in key.split("/")):
            raise PermanentStorageError(bucket, key, PERMANENT_CODES["KeyTooLongError"])
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to((self.root / bucket).resolve()) or "/" in bucket or bucket in ("", ".", ".."):
            raise PermanentStorageError(bucket, key, "invalid object key: it escapes the bucket")
        if not (self.root / bucket).is_dir():
            raise PermanentStorageError(bucket, key, PERMANENT_CODES["NoSuchBucket"])
        return path

    async def ensure_bucket(self, bucket: str) -> None:
        await asyncio.to_thread((self.root / bucket).mkdir, parents=True, exist_ok=True)

    def _write_atomically(self, path: Path, fileobj: IO[bytes], place: Callable[[str, Path], None] = os.replace) -> int:
        """Write a temporary file, then put it in place in one step: readers see the whole object or none.
        `place=os.link` refuses an existing object (FileExistsError)."""
        path.parent.mkdir(parents=True, exist_ok=True)  # folders inside the bucket only: it exists
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, COPY_CHUNK)
                size = out.tell()
            os.chmod(tmp, 0o644)
            place(tmp, path)
            return size
        finally:
            Path(tmp).unlink(missing_ok=True)

    async def put_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> int:
        return await asyncio.to_thread(self._write_atomically, self._path(bucket, key), fileobj)

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write_atomically, self._path(bucket, key), BytesIO(data))

    async def put_if_absent(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> bool:
        try:
            await asyncio.to_thread(self._write_atomically, self._path(bucket, key), fileobj, os.link)
        except FileExistsError:
            return False
        return True

    async def exists(self, bucket: str, key: str) -> bool:
        return await asyncio.to_thread(self._path(bucket, key).is_file)

    async def delete(self, bucket: str, key: str) -> bool:
        try:
            await asyncio.to_thread(self._path(bucket, key).unlink)
        except FileNotFoundError:
            return False
        return True

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
            if not base.is_dir():
                return {}
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

    async def size(self, bucket: str, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._path(bucket, key).stat)).st_size
        except FileNotFoundError:
            return None

    async def read_range(self, bucket: str, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `start`, RANGE_CHUNK at a time."""
        with await asyncio.to_thread(self._path(bucket, key).open, "rb") as source:
            await asyncio.to_thread(source.seek, start)
            while length > 0 and (chunk := await asyncio.to_thread(source.read, min(RANGE_CHUNK, length))):
                length -= len(chunk)
                yield chunk

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

    async def _call(
        self, bucket: str, key: str | None, function: Callable[..., R], *args: Any, **kwargs: Any
    ) -> R | None:
        """Run a blocking SDK call in a thread; a missing object is None, a permanent refusal raises."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except S3Error as error:
            if error.code in MISSING_CODES:
                return None
            raise _from_s3(error, bucket, key) from error

    async def ensure_bucket(self, bucket: str) -> None:
        if not await asyncio.to_thread(self.client.bucket_exists, bucket):
            try:
                await asyncio.to_thread(self.client.make_bucket, bucket)
            except S3Error as error:
                if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    async def put_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> int:
        await self._call(
            bucket, key, self.client.put_object, bucket, key, fileobj, -1, content_type=content_type,
            part_size=S3_PART_SIZE,
        )  # fmt: skip
        stat = await self._call(bucket, key, self.client.stat_object, bucket, key)
        return (stat.size or 0) if stat else 0

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        await self._call(bucket, key, self.client.put_object, bucket, key, BytesIO(data), len(data),
                         content_type=content_type)  # fmt: skip

    async def get_bytes(self, bucket: str, key: str) -> bytes | None:
        def read() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(bucket, key, read)

    async def modified_at(self, bucket: str, key: str) -> datetime | None:
        stat = await self._call(bucket, key, self.client.stat_object, bucket, key)
        return stat.last_modified if stat else None

    async def list_prefix(self, bucket: str, prefix: str) -> dict[str, datetime]:
        def scan() -> dict[str, datetime]:
            return {
                obj.object_name: obj.last_modified
                for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if obj.object_name and obj.last_modified
            }

        try:
            return await self._call(bucket, None, scan) or {}
        except PermanentStorageError:
            return {}

    async def exists(self, bucket: str, key: str) -> bool:
        return await self._call(bucket, key, self.client.stat_object, bucket, key) is not None

    async def delete(self, bucket: str, key: str) -> bool:
        """S3 answers a delete of a missing object with success: ask first, to say whether it was there."""
        if not await self.exists(bucket, key):
            return False
        await self._call(bucket, key, self.client.remove_object, bucket, key)
        return True

    async def put_if_absent(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str) -> bool:
        """Checked, then written: MinIO's SDK cannot send `If-None-Match: *` (it would make it user
        metadata), so two writers racing may both write. The callers write the same bytes either way."""
        if await self.exists(bucket, key):
            return False
        await self.put_file(bucket, key, fileobj, content_type)
        return True

    async def size(self, bucket: str, key: str) -> int | None:
        stat = await self._call(bucket, key, self.client.stat_object, bucket, key)
        return stat.size if stat else None

    async def read_range(self, bucket: str, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `start`, streamed from one ranged GET, RANGE_CHUNK at a time."""
        response = await self._call(bucket, key, self.client.get_object, bucket, key, offset=start, length=length)
        if response is None:
            raise FileNotFoundError(f"{bucket}/{key}")
        chunks = response.stream(RANGE_CHUNK)
        try:
            while chunk := await asyncio.to_thread(next, chunks, b""):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    @asynccontextmanager
    async def local_copy(self, bucket: str, key: str) -> AsyncIterator[Path]:
        with tempfile.TemporaryDirectory(prefix="vdetect-") as folder:
            path = Path(folder) / Path(key).name
            if await self._call(bucket, key, self.client.fget_object, bucket, key, str(path)) is None:
                raise FileNotFoundError(f"{bucket}/{key}")
            yield path
