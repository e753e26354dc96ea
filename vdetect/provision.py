"""`vdetect storage-init`: give the application its own MinIO user, limited to its buckets.

Compose runs it once, as `minio-init`, with MinIO's root credentials; no other service sees them. It
creates the buckets (ALLOWED_BUCKETS, or DEFAULT_BUCKET), a policy that allows object reads, writes,
listing and deletes in those buckets only (no bucket creation or deletion, no other bucket, no admin
call), and the application user (MINIO_ACCESS_KEY / MINIO_SECRET_KEY) with that policy. Idempotent: a
second run updates the user's password and the policy. The credentials travel in the environment
and in request bodies, never on a command line.
"""

from typing import Any

from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.log import get_logger
from events.settings import Settings

log = get_logger(__name__)
POLICY = "vdetect-app"


class RootCredentials(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    minio_root_user: str
    minio_root_password: SecretStr


def app_policy(buckets: set[str]) -> dict[str, Any]:
    """An IAM policy: the application's object operations, in its own buckets and nowhere else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}" for bucket in sorted(buckets)],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*" for bucket in sorted(buckets)],
            },
        ],
    }


def provision_storage(settings: Settings, root: RootCredentials) -> None:
    if settings.minio_access_key is None or settings.minio_secret_key is None:
        raise ValueError("MINIO_ACCESS_KEY and MINIO_SECRET_KEY name the application user to create")
    app_user = settings.minio_access_key.get_secret_value()
    if app_user == root.minio_root_user:
        raise ValueError("MINIO_ACCESS_KEY must not be the root user: the application gets its own user")
    password = root.minio_root_password.get_secret_value()
    client = Minio(settings.minio_endpoint, access_key=root.minio_root_user, secret_key=password,
                   secure=settings.minio_secure, region=settings.minio_region)  # fmt: skip
    for bucket in sorted(settings.bucket_allowlist):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            log.info("bucket created", bucket=bucket)
    admin = MinioAdmin(endpoint=settings.minio_endpoint, credentials=StaticProvider(root.minio_root_user, password),
                       secure=settings.minio_secure)  # fmt: skip
    admin.policy_add(POLICY, policy=app_policy(settings.bucket_allowlist))
    admin.user_add(app_user, settings.minio_secret_key.get_secret_value())
    admin.policy_set(POLICY, user=app_user)
    log.info("application user ready", user=app_user, policy=POLICY, buckets=sorted(settings.bucket_allowlist))
