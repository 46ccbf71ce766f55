"""`S3Store`: Akave O3, AWS S3, MinIO and SeaweedFS through boto3.

Settings that matter for Akave O3: SigV4 (``s3v4``),
path-style addressing, region ``akave-network``, and ``when_required`` checksum modes (recent
boto3 otherwise adds CRC trailers that several S3-compatible servers reject).

Limitation of presigned PUT: a SigV4 query-signed PUT URL cannot express a *maximum* size.
`presign_put` therefore does not bind ``max_bytes`` (``enforces_put_max_bytes`` is False) and the
receiver must check the uploaded object's size with `head` (and its content hash after download)
before trusting it. When the exact size is known in advance, `presign_put_exact` signs the
``Content-Length`` header so the server refuses any other size.
"""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from fedswarm.storage.base import (
    COPY_BUFSIZE,
    AccessDenied,
    Destination,
    HashingReader,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    Source,
    StoreError,
    StoreUnavailable,
    check_declared_size,
    check_running_size,
    open_destination,
    open_source,
    validate_key,
    validate_ttl,
)

AKAVE_REGION = "akave-network"
DEFAULT_MULTIPART_THRESHOLD = 100 * 1024 * 1024  # Akave's suggestion
DEFAULT_PART_SIZE = 64 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rule: every part but the last is at least 5 MiB
_SHA_META = "sha256"

_DENIED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken",
           "InvalidToken", "AuthorizationHeaderMalformed", "403"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store(ObjectStore):
    """An S3-compatible bucket. Thread-safe (one boto3 client, shared)."""

    enforces_put_max_bytes = False

    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        bucket: str,
        endpoint: str | None = None,
        region: str = AKAVE_REGION,
        create_bucket: bool = True,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        timeout: float = 60.0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's 5 MiB minimum part size")
        self.bucket = bucket
        self.endpoint = endpoint
        self.region = region
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=min(timeout, 10.0),
            read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max(10, max_concurrency * 2),
        )
        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_size,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
        )
        if create_bucket:
            self.ensure_bucket()

    # -- setup

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (and we are allowed to)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _MISSING | {"NoSuchBucket"}:
                raise self._error(exc, f"bucket {self.bucket}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"bucket {self.bucket}") from None
        try:
            if self.region in ("us-east-1", AKAVE_REGION) or not self.region:
                self._s3.create_bucket(Bucket=self.bucket)
            else:
                self._s3.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},
                )
        except ClientError as exc:
            if _code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self._error(exc, f"bucket {self.bucket}") from None

    # -- presigning (local computation, no round trip)

    def presign_get(self, key: str, ttl: float) -> str:
        validate_key(key)
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=validate_ttl(ttl)
        )

    def presign_put(self, key: str, ttl: float, max_bytes: int, *,
                    sha256: str | None = None) -> str:
        """Presigned PUT. ``max_bytes`` and ``sha256`` are NOT enforced by S3 (see the module
        docstring): check the object with `head` after the upload."""
        validate_key(key)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        return self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=validate_ttl(ttl)
        )

    def presign_put_exact(self, key: str, ttl: float, size: int) -> str:
        """Presigned PUT that only accepts a body of exactly ``size`` bytes: Content-Length is
        one of the signed headers, so any other length fails the signature check."""
        validate_key(key)
        return self._s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentLength": int(size)},
            ExpiresIn=validate_ttl(ttl),
        )

    # -- operations

    def put(self, key: str, src: Source, *, content_length: int | None = None) -> ObjectInfo:
        validate_key(key)
        with open_source(src, content_length) as (fh, size):
            extra: dict[str, Any] = {"ContentType": "application/octet-stream"}
            # A seekable source is hashed first so the sha256 can ride along as metadata
            # (S3 metadata is fixed at upload time); a pure stream is hashed on the way out.
            pre_sha: str | None = None
            if size is not None and fh.seekable():
                pos = fh.tell()
                pre_sha = _sha256_of(fh, size)
                fh.seek(pos)
                extra["Metadata"] = {_SHA_META: pre_sha}
            # The seekable file goes to boto3 as is (it seeks per part); a stream goes through
            # a forward-only hashing wrapper.
            reader = HashingReader(fh, size)
            body: Any = _KeepOpen(fh) if pre_sha is not None else reader
            try:
                self._s3.upload_fileobj(body, self.bucket, key, ExtraArgs=extra,
                                        Config=self._transfer)
            except ObjectTooLarge:
                raise
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, key) from None
            except ValueError as exc:  # s3transfer wraps some source errors this way
                raise StoreError(f"upload of {key} failed: {exc}") from None
        sha = pre_sha or reader.sha256.hexdigest()
        sent = size if pre_sha is not None else reader.size
        info = self.head(key)
        if info is None or info.size != sent:
            raise IntegrityError(f"{key}: store holds {info.size if info else 'nothing'} bytes "
                                 f"after uploading {sent}; retry")
        return ObjectInfo(key, int(sent or 0), sha, info.etag)

    def get(self, key: str, dst: Destination, *, max_bytes: int | None = None) -> ObjectInfo:
        validate_key(key)
        if max_bytes is not None:  # HEAD first: an oversized object is never requested at all
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(f"no object {key}")
            check_declared_size(key, info.size, max_bytes)
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from None
        expected = (resp.get("Metadata") or {}).get(_SHA_META)
        h = hashlib.sha256()
        size = 0
        body = resp["Body"]
        try:
            check_declared_size(key, resp.get("ContentLength"), max_bytes)  # replaced since HEAD?
            with open_destination(dst) as out:
                for chunk in body.iter_chunks(COPY_BUFSIZE):
                    size += len(chunk)
                    check_running_size(key, size, max_bytes)
                    h.update(chunk)
                    out.write(chunk)
                if size != resp.get("ContentLength", size):
                    raise IntegrityError(f"{key}: got {size} of {resp['ContentLength']} bytes; retry")
                if expected and h.hexdigest() != expected:
                    raise IntegrityError(f"{key}: content does not match its recorded sha256")
        except BotoCoreError as exc:
            raise self._error(exc, key) from None
        finally:
            body.close()
        return ObjectInfo(key, size, h.hexdigest(), _etag(resp))

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            resp = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None
        sha = (resp.get("Metadata") or {}).get(_SHA_META)
        return ObjectInfo(key, int(resp["ContentLength"]), sha, _etag(resp))

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    # -- errors

    def _error(self, exc: Exception, what: str) -> StoreError:
        where = self.endpoint or "AWS S3"
        if isinstance(exc, EndpointConnectionError):
            return StoreUnavailable(f"cannot reach S3 endpoint {where}; check FEDSWARM_S3_ENDPOINT")
        if isinstance(exc, BotoCoreError):
            return StoreUnavailable(f"S3 request for {what} at {where} failed: {type(exc).__name__}")
        code = _code(exc)
        if code in _MISSING or code == "NoSuchBucket":
            return ObjectNotFound(f"no {what} in bucket {self.bucket} at {where}")
        if code in _DENIED:
            return AccessDenied(f"S3 refused {what} ({code}): check AWS_ACCESS_KEY_ID, "
                                f"AWS_SECRET_ACCESS_KEY and FEDSWARM_S3_REGION ({self.region})")
        if code in ("EntityTooLarge",):
            return ObjectTooLarge(f"S3 refused {what}: too large")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)  # type: ignore[attr-defined]
        if status >= 500:
            return StoreUnavailable(f"S3 at {where} failed on {what} ({code}); retry later")
        return StoreError(f"S3 refused {what} ({code})")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _etag(resp: dict[str, Any]) -> str | None:
    tag = resp.get("ETag")
    return tag.strip('"') if isinstance(tag, str) else None


def _sha256_of(fh: Any, size: int) -> str:
    h = hashlib.sha256()
    left = size
    while left > 0:
        chunk = fh.read(min(COPY_BUFSIZE * 4, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


class _KeepOpen:
    """Seekable view of a caller's file that ignores ``close()``: s3transfer closes the file
    object it uploads from, which must not close a file the caller still owns."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass
