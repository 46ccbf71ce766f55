"""The one place an `ObjectStore` backend is chosen from `Settings`."""

from __future__ import annotations

from fedswarm.config import ConfigError, Settings
from fedswarm.storage.base import ObjectStore


def uses_s3(settings: Settings) -> bool:
    """S3 when not on the devnet, or when S3 credentials or an endpoint are configured (so a
    devnet can also run against a local SeaweedFS/MinIO); otherwise the devnet store."""
    return (not settings.is_devnet) or bool(settings.aws_access_key_id or settings.s3_endpoint)


def make_object_store(settings: Settings) -> ObjectStore:
    """The configured object store, ready to use.

    Devnet: the `LocalStore` of the running ``fedswarm devnet up`` (``devnet.json``).
    Otherwise: `S3Store` from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and
    ``FEDSWARM_S3_ENDPOINT``/``FEDSWARM_S3_REGION``/``FEDSWARM_S3_BUCKET``.
    Raises `ConfigError` (one line) when something needed is missing.
    """
    if not uses_s3(settings):
        from fedswarm.storage.localstore import LocalStore

        return LocalStore.from_devnet_state(settings.devnet_state())

    from fedswarm.storage.s3 import S3Store

    if settings.aws_access_key_id is None or settings.aws_secret_access_key is None:
        raise ConfigError(
            "S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "FEDSWARM_S3_ENDPOINT for Akave O3, e.g. https://o3-rc2.akave.xyz)"
        )
    if settings.s3_endpoint is not None and not settings.s3_endpoint.startswith(
        ("http://", "https://")
    ):
        raise ConfigError(
            f"FEDSWARM_S3_ENDPOINT {settings.s3_endpoint!r} must start with https:// or http://"
        )
    return S3Store(
        access_key=settings.aws_access_key_id.get_secret_value(),
        secret_key=settings.aws_secret_access_key.get_secret_value(),
        bucket=settings.s3_bucket,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        create_bucket=settings.s3_create_bucket,
    )
