import pytest
from fastapi import HTTPException

from api.timing import elapsed_seconds, format_duration
from api.validation import check_bucket, check_object_key, looks_like_video
from tests.servers import bikes_video


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (45, "45s"), (125, "2m 5s"), (3725, "1h 2m 5s")])
def test_durations_are_formatted_like_the_original(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_elapsed_seconds_never_negative() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    assert elapsed_seconds(now, now - timedelta(seconds=5)) == 0
    assert elapsed_seconds(now - timedelta(seconds=90), now) == 90


@pytest.mark.parametrize("bucket", ["videos", "my-bucket.2024", "abc"])
def test_valid_allowed_buckets_pass_and_others_are_refused_without_naming_the_allowed(bucket: str) -> None:
    assert check_bucket(bucket, {bucket}) == bucket
    with pytest.raises(HTTPException) as error:
        check_bucket(bucket, {"secret-bucket-name"})
    assert error.value.status_code == 403 and "secret-bucket-name" not in error.value.detail


@pytest.mark.parametrize("bucket", ["", "ab", "Videos", "a_b", "../etc", "-abc", "a..b", "x" * 64])
def test_invalid_buckets_are_refused(bucket: str) -> None:
    with pytest.raises(HTTPException) as error:
        check_bucket(bucket, {bucket})
    assert error.value.status_code == 400 and "bucket" in error.value.detail


@pytest.mark.parametrize("key", ["/etc/passwd", "../x.mp4", "a//b.mp4", "a/./b", "a\nb"])
def test_unsafe_object_keys_are_refused(key: str) -> None:
    with pytest.raises(HTTPException):
        check_object_key(key)


def test_video_containers_are_recognised_by_their_bytes() -> None:
    assert looks_like_video(bikes_video().read_bytes()[:512])
    assert looks_like_video(b"\x1a\x45\xdf\xa3" + b"\0" * 60)  # Matroska / WebM
    assert looks_like_video(b"RIFF\0\0\0\0AVI LIST")
    assert not looks_like_video(b"%PDF-1.7 ...")
    assert not looks_like_video(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


@pytest.mark.parametrize(
    ("address", "public"),
    [("93.184.215.14", True), ("2606:4700::1111", True), ("64:ff9b::5db8:d70e", True),  # NAT64 of a public one
     ("100.64.0.1", False), ("100.100.100.200", False), ("192.0.0.8", False), ("fec0::1", False),
     ("2002:7f00:1::", False), ("2002:a00:1::", False), ("::ffff:10.0.0.1", False), ("64:ff9b::7f00:1", False),
     ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False), ("169.254.169.254", False), ("fd00::1", False),
     ("224.0.0.1", False), ("ff02::1", False), ("0.0.0.0", False), ("255.255.255.255", False)],
)  # fmt: skip
def test_only_globally_routable_addresses_receive_webhooks_also_when_carried_in_ipv6(address, public) -> None:
    from events.webhooks import is_public

    assert is_public(address) is public
