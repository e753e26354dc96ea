from io import BytesIO

import pytest

from events.storage import DirectoryStore


async def test_directory_store_writes_reads_lists_and_deletes(tmp_path) -> None:
    store = DirectoryStore(tmp_path)
    await store.ensure_bucket("videos")
    assert await store.put_file("videos", "input/a.mp4", BytesIO(b"x" * 3_000_000), "video/mp4") == 3_000_000
    await store.put_bytes("videos", "detection/a.json", b"{}", "application/json")
    assert await store.get_bytes("videos", "detection/a.json") == b"{}"
    assert await store.get_bytes("videos", "detection/missing.json") is None
    assert await store.modified_at("videos", "detection/missing.json") is None
    assert set(await store.list_prefix("videos", "detection/")) == {"detection/a.json"}
    assert await store.buckets() == ["videos"]
    async with store.local_copy("videos", "input/a.mp4") as path:
        assert path.stat().st_size == 3_000_000
    assert await store.delete_prefix("videos", "input/") == 1
    assert await store.list_prefix("videos", "input/") == {}
    assert not list((tmp_path / "videos").rglob(".part-*"))


async def test_directory_store_refuses_keys_that_escape_its_root(tmp_path) -> None:
    store = DirectoryStore(tmp_path / "root")
    with pytest.raises(ValueError):
        await store.put_bytes("videos", "../../outside", b"x", "text/plain")


async def test_a_failed_write_leaves_nothing_behind(tmp_path) -> None:
    class Broken(BytesIO):
        def read(self, *args):
            raise OSError("disk gone")

    store = DirectoryStore(tmp_path)
    with pytest.raises(OSError):
        await store.put_file("videos", "input/b.mp4", Broken(), "video/mp4")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
