"""Both object-store adapters pass one contract: a local directory, and S3 against a real s3rver."""

from collections.abc import Iterator
from io import BytesIO

import pytest
from pydantic import SecretStr

from events.clients import object_store
from events.settings import Settings
from events.storage import DirectoryStore, ObjectStore, PermanentStorageError
from tests.servers import Server, running, s3rver


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(s3rver(tmp_path_factory.mktemp("s3rver"))) as server:
        yield server


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    if request.param == "dir":
        return DirectoryStore(tmp_path / "objects")
    server = request.getfixturevalue("s3_server")
    settings = Settings(
        storage_backend="s3",
        minio_endpoint=f"127.0.0.1:{server.port}",
        minio_access_key=SecretStr("S3RVER"),
        minio_secret_key=SecretStr("S3RVER"),
    )
    return object_store(settings)


async def test_store_writes_reads_lists_and_deletes(store: ObjectStore) -> None:
    await store.ensure_bucket("videos")
    await store.ensure_bucket("videos")  # twice is fine
    big = b"0123456789abcdef" * (1024 * 1024)  # 16 MiB: several parts on S3
    assert await store.put_file("videos", "input/a.mp4", BytesIO(big), "video/mp4") == len(big)
    await store.put_bytes("videos", "detection/a.json", b'{"x": 1}', "application/json")
    assert await store.get_bytes("videos", "detection/a.json") == b'{"x": 1}'
    assert await store.get_bytes("videos", "detection/missing.json") is None
    assert await store.modified_at("videos", "detection/missing.json") is None
    assert await store.modified_at("videos", "detection/a.json") is not None
    assert set(await store.list_prefix("videos", "detection/")) == {"detection/a.json"}
    assert await store.exists("videos", "detection/a.json") and not await store.exists("videos", "detection/b.json")
    # written once: a second writer finds the object and leaves it as it is
    assert await store.put_if_absent("videos", "detection/b.json", BytesIO(b"first"), "application/json")
    assert not await store.put_if_absent("videos", "detection/b.json", BytesIO(b"second"), "application/json")
    assert await store.get_bytes("videos", "detection/b.json") == b"first"
    async with store.local_copy("videos", "input/a.mp4") as path:
        assert path.read_bytes() == big
    with pytest.raises(FileNotFoundError):
        async with store.local_copy("videos", "input/missing.mp4"):
            pass
    assert await store.delete("videos", "input/a.mp4") and not await store.delete("videos", "input/a.mp4")
    assert await store.list_prefix("videos", "input/") == {}
    assert await store.list_prefix("no-such-bucket", "input/") == {}


async def test_directory_store_refuses_keys_that_escape_its_root(tmp_path) -> None:
    store = DirectoryStore(tmp_path / "root")
    await store.ensure_bucket("videos")
    with pytest.raises(PermanentStorageError, match="invalid object key"):
        await store.put_bytes("videos", "../../outside", b"x", "text/plain")
    with pytest.raises(PermanentStorageError, match="invalid object key"):
        await store.put_bytes("videos", "../other/x", b"x", "text/plain")  # another bucket is outside too


async def test_directory_store_does_not_create_buckets_on_write(tmp_path) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises(PermanentStorageError, match="does not exist"):
        await store.put_bytes("gone", "detection/a.json", b"{}", "application/json")
    with pytest.raises(PermanentStorageError, match="does not exist"):
        await store.get_bytes("gone", "detection/a.json")
    assert not (tmp_path / "gone").exists()


async def test_a_failed_directory_write_leaves_nothing_behind(tmp_path) -> None:
    class Broken(BytesIO):
        def read(self, *args):
            raise OSError("disk gone")

    store = DirectoryStore(tmp_path)
    await store.ensure_bucket("videos")
    with pytest.raises(OSError):
        await store.put_file("videos", "input/b.mp4", Broken(), "video/mp4")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_s3_needs_credentials_from_the_environment() -> None:
    with pytest.raises(ValueError, match="MINIO_ACCESS_KEY"):
        object_store(Settings(storage_backend="s3"))
