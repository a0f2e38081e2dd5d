"""The ``s3:`` backend: a repository in an S3 bucket, so workers on several hosts share it.

``s3:BUCKET[/PREFIX]`` with options ``endpoint`` (an S3-compatible server such as SeaweedFS or
MinIO, e.g. ``http://127.0.0.1:8333``; default: AWS) and ``region``. Credentials come only
from the environment through boto3's default chain (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role): never from options, so they never
end up in a vault's configuration, and no message or log line of ours carries them.

Layout: the local backend's, under the prefix (``PREFIX/config``, ``PREFIX/keys/<name>``,
``PREFIX/data/<name[:2]>/<name>``, ``PREFIX/index/<name>``...; docs/design.md §2). Mirroring it
key for key means a repository folder copied with ``aws s3 sync`` or rclone opens as an
``s3:`` repository and back, and the data fan-out spreads packs over prefixes, which is how
S3 scales request rates.

How each call keeps the contract (``base.py``, ``contract.py``):

- ``save`` is one PUT with ``If-None-Match: *``: S3 makes an object visible only complete,
  and the condition makes the write-once rule hold even for two hosts racing on one name
  (412 -> ``AlreadyExists``). A server that ignores the header would silently overwrite;
  AWS (since 2024) and SeaweedFS honour it.
- ``load`` with a range is one ranged GET; the total size in ``Content-Range`` tells a range
  past the end (``IntegrityError``, never a short read) without a second request.
- ``stat`` is HEAD; ``list`` is ListObjectsV2, page by page; ``remove`` is HEAD then DELETE,
  because S3's DELETE succeeds for a missing key and the contract wants ``ObjectNotFound``.

boto3's own retries are turned off: ``open_s3_storage`` wraps the backend in
``RetryingStorage``, which recognises "my earlier, lost try stored it" for a conditional
save; a retry hidden inside botocore would turn that into a spurious ``AlreadyExists``.

The module also holds the key layout and redaction that ``azure_blob`` shares.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from rehost.errors import (
    AlreadyExists,
    BackendError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    RehostError,
    UsageError,
)
from rehost.repository.storage.base import Kind, ObjectInfo, Storage
from rehost.repository.storage.contract import (
    CONFIG_NAME,
    check_name,
    check_range,
    describe,
    is_valid_name,
    range_bounds,
)
from rehost.repository.storage.retry import RetryingStorage

log = logging.getLogger(__name__)

#: HTTP statuses after which the same request may well succeed.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: S3 error codes that mean "busy or briefly broken, try again" whatever the status.
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "OperationAborted",
    "ConditionalRequestConflict",  # 409: a concurrent conditional write to the key is in flight
})
#: S3 error codes that mean the credentials are wrong or not allowed.
ACCESS_CODES = frozenset({
    "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "403",
})
CONNECT_TIMEOUT_S = 10.0
#: Generous: a 16 MiB pack over a slow uplink must not look like a dead server.
READ_TIMEOUT_S = 120.0

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


# -- shared by the object-store backends (s3, azure_blob) ---------------------------------


def parse_location(rest: str, scheme: str, example: str) -> tuple[str, str]:
    """``(container, prefix)`` from ``BUCKET[/PREFIX]``; the prefix has no leading or
    trailing ``/`` and no empty segments. ``s3://bucket/p`` is accepted like ``s3:bucket/p``."""
    container, _, prefix = rest.lstrip("/").partition("/")
    if not container:
        raise UsageError(f"{scheme}: needs a bucket or container name, e.g. {example}")
    return container, "/".join(part for part in prefix.split("/") if part)


class ObjectLayout:
    """Object keys of a repository under a prefix: the local backend's layout (see module doc)."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}/" if prefix else ""

    def key(self, kind: Kind, name: str) -> str:
        check_name(kind, name)
        if kind is Kind.CONFIG:
            return self.base + CONFIG_NAME
        if kind is Kind.DATA:
            return f"{self.base}data/{name[:2]}/{name}"
        return f"{self.base}{kind.value}/{name}"

    def kind_prefix(self, kind: Kind) -> str:
        """Every key of ``kind`` starts with this (not meaningful for ``Kind.CONFIG``)."""
        return f"{self.base}{kind.value}/"

    def name(self, kind: Kind, key: str) -> str | None:
        """The object name behind ``key``, or None for keys that are not ours (a stray
        upload, a folder marker some tools write) so listings skip them."""
        prefix = self.kind_prefix(kind)
        if not key.startswith(prefix):
            return None
        rest = key[len(prefix):]
        if kind is Kind.DATA:
            fanout, _, rest = rest.partition("/")
            if fanout != rest[:2]:
                return None
        return rest if is_valid_name(rest) else None


_SECRET_PARAMS = re.compile(r"(?i)\b(sig|signature|accountkey|sharedaccesssignature)=[^&\s;'\"<>]*")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without ``sig=``/``AccountKey=``-style values or any of ``secrets``.

    Error texts come from servers and SDKs; they should not hold a secret, but a message
    that reaches a log or a web page is the wrong place to find out one did.
    """
    text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}=<removed>", text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # a tiny "secret" would blank out ordinary words
            text = text.replace(secret, "<secret removed>")
    return text


def shown_url(url: str) -> str:
    """A URL as messages show it: without a query (a SAS) or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


# -- the S3 backend ------------------------------------------------------------------------


def open_s3_storage(rest: str, options: dict[str, Any]) -> Storage:
    """The ``s3:`` opener of ``open_storage``: an ``S3Storage`` inside ``RetryingStorage``."""
    bucket, prefix = parse_location(rest, "s3", "s3:my-bucket/rehost")
    endpoint = options.get("endpoint")
    region = options.get("region")
    return RetryingStorage(S3Storage(bucket, prefix, endpoint=endpoint, region=region))


class S3Storage:
    """A repository under ``prefix`` in an existing ``bucket`` (rehost does not create buckets:
    region, versioning and access policies are the owner's decisions).

    Opening checks the bucket with one HEAD, so wrong credentials or a mistyped bucket fail
    at once with a clear message rather than halfway through a cycle. One boto3 client is
    shared by all threads (boto3 clients are thread-safe).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        check: bool = True,
    ) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise UsageError(
                f"invalid S3 bucket name {bucket!r}: 3-63 characters of [a-z0-9.-], "
                "starting and ending with a letter or digit"
            )
        if endpoint is not None and not re.match(r"https?://", str(endpoint)):
            raise UsageError(f"the s3 endpoint must be an http(s) URL, not {shown_url(str(endpoint))!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.layout = ObjectLayout(prefix)
        self.location = f"s3:{bucket}" + (f"/{prefix}" if prefix else "") + (
            f" at {shown_url(endpoint)}" if endpoint else ""
        )
        boto3, config_cls = _import_boto3()
        self._session = _new_session(boto3)
        config = config_cls(
            # A custom endpoint (SeaweedFS, MinIO) rarely has wildcard DNS for bucket hosts.
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"total_max_attempts": 1},  # RetryingStorage retries (see module doc)
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            max_pool_connections=32,  # pack writers, readers and listings of one process
        )
        self._client: Any = self._session.client(
            "s3",
            endpoint_url=endpoint,
            # Signing needs a region; servers other than AWS accept any.
            region_name=region or (None if self._session.region_name or not endpoint else "us-east-1"),
            config=config,
        )
        if check:
            self._check_bucket()

    # -- the Storage protocol -------------------------------------------------------------

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        key = self.layout.key(kind, name)
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except Exception as e:
            if _status(e) == 412 or _code(e) == "PreconditionFailed":
                raise AlreadyExists(f"{describe(kind, name)} already exists in {self.location}") from None
            raise self._error(e, "save", kind, name) from None

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self.layout.key(kind, name)
        check_range(offset, length)
        if length == 0:  # S3 has no empty range; the size alone decides
            range_bounds(self.stat(kind, name).size, offset, length, kind=kind, name=name)
            return b""
        ranged = offset > 0 or length is not None
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if ranged:
            args["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            reply = self._client.get_object(**args)
            data: bytes = reply["Body"].read()
        except Exception as e:
            if _status(e) == 416 or _code(e) == "InvalidRange":
                # Nothing at offset: past the end (damage), or exactly at the end (b"").
                range_bounds(self.stat(kind, name).size, offset, length, kind=kind, name=name)
                return b""
            raise self._error(e, "load", kind, name) from None
        if not ranged:
            return data
        total = content_range_total(reply.get("ContentRange"))
        if total is None:  # the server ignored Range and sent the whole object
            start, end = range_bounds(len(data), offset, length, kind=kind, name=name)
            return data[start:end]
        start, end = range_bounds(total, offset, length, kind=kind, name=name)
        if len(data) != end - start:
            raise IntegrityError(
                f"short read of {describe(kind, name)} in {self.location}: "
                f"{len(data)} of {end - start} bytes"
            )
        return data

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        key = self.layout.key(kind, name)
        try:
            reply = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            raise self._error(e, "stat", kind, name) from None
        return ObjectInfo(kind, name, int(reply["ContentLength"]))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        if kind is Kind.CONFIG:
            with contextlib.suppress(ObjectNotFound):
                yield self.stat(kind, CONFIG_NAME)
            return
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.layout.kind_prefix(kind)
        )
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    name = self.layout.name(kind, entry["Key"])
                    if name is not None:
                        yield ObjectInfo(kind, name, int(entry["Size"]))
        except RehostError:
            raise
        except Exception as e:
            raise self._error(e, "list", kind, None) from None

    def remove(self, kind: Kind, name: str) -> None:
        self.stat(kind, name)  # ObjectNotFound for a missing object (see module doc)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.layout.key(kind, name))
        except Exception as e:
            raise self._error(e, "remove", kind, name) from None

    def room_to_defer(self, nbytes: int) -> bool:
        return False  # a network, maybe a bill: compressed before it is sent

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    # -- helpers --------------------------------------------------------------------------

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if _status(e) == 404 or _code(e) in {"NoSuchBucket", "404"}:
                raise NotFound(
                    f"no S3 bucket {self.bucket!r}"
                    + (f" at {shown_url(self.endpoint)}" if self.endpoint else "")
                    + ": create it first (rehost does not create buckets)"
                ) from None
            raise self._error(e, "open", None, None) from None

    def _secrets(self) -> builtins.list[str | None]:
        """Every credential value a message must not show (for ``redact``)."""
        found: builtins.list[str | None] = [
            os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"),
        ]
        try:
            creds = self._session.get_credentials()
        except Exception:  # a broken profile: nothing more to hide than the environment's
            creds = None
        if creds is not None:
            found += [creds.secret_key, creds.token]
        return found

    def _error(self, e: Exception, op: str, kind: Kind | None, name: str | None) -> RehostError:
        """A botocore exception as the rehost error the other backends would raise."""
        what = f"{op} {describe(kind, name)}" if kind is not None and name is not None else (
            f"{op} {kind.value}/" if kind is not None else op
        )
        where = f"cannot open {self.location}" if op == "open" else f"cannot {what} in {self.location}"
        status, code = _status(e), _code(e)
        if _is_client_error(e):
            missing = code in {"NoSuchKey", "NotFound", "404"} or (status == 404 and code != "NoSuchBucket")
            if missing and kind is not None and name is not None:
                return ObjectNotFound(f"{describe(kind, name)} not found in {self.location}")
            if status == 403 or code in ACCESS_CODES:
                return BackendError(
                    f"{where}: access denied ({code or status}); check the credentials in "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS profile) and "
                    "the bucket's policy"
                )
            if code == "NoSuchBucket":
                return BackendError(f"{where}: the bucket {self.bucket!r} does not exist")
            detail = _message(e)
            text = f"{where}: {code or 'error'} (HTTP {status})" + (f": {detail}" if detail else "")
            retryable = (status in RETRYABLE_STATUSES or code in RETRYABLE_CODES
                         or (status is not None and status >= 500))
            return BackendError(redact(text, *self._secrets()), retryable=retryable)
        kind_of = _botocore_failure(e)
        if kind_of == "credentials":
            return UsageError(
                f"{where}: no usable S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment (or configure an AWS profile or role)"
            )
        text = redact(f"{where}: {type(e).__name__}: {e}", *self._secrets())
        return BackendError(text, retryable=kind_of == "transient")


def _import_boto3() -> tuple[Any, Any]:
    """boto3 and botocore's ``Config``, imported on first use: they cost ~0.3 s and only
    ``s3:`` repositories need them."""
    try:
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise UsageError("s3: storage needs boto3: pip install boto3") from None
    return boto3, Config


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_session(boto3: Any) -> Any:
    """A boto3 session of its own (sessions are not thread-safe, and each resolves the
    credentials of the environment it opens in) sharing one botocore data loader, the cache
    of parsed service models: loading them again costs ~0.1 s per open."""
    import botocore.session  # type: ignore[import-untyped, import-not-found, unused-ignore]

    global _shared_loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core)


def _is_client_error(e: Exception) -> bool:
    return hasattr(e, "response") and isinstance(getattr(e, "response", None), dict)


def _status(e: Exception) -> int | None:
    if not _is_client_error(e):
        return None
    status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _code(e: Exception) -> str:
    if not _is_client_error(e):
        return ""
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _message(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Message", ""))


def _botocore_failure(e: Exception) -> str:
    """``credentials``, ``transient`` (network, timeout, a body cut short) or ``other``."""
    from botocore import exceptions as bx  # type: ignore[import-untyped, import-not-found, unused-ignore]

    if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
        return "credentials"
    # ConnectionError covers refused connections and connect timeouts; HTTPClientError read
    # timeouts and dropped connections; the other two a body cut short.
    transient = (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError,
                 bx.ResponseStreamingError)
    if isinstance(e, transient):
        return "transient"
    # urllib3 errors escaping a body read (a connection dropped mid-download)
    if type(e).__module__.startswith(("urllib3", "http.client")) or isinstance(
        e, ConnectionError | TimeoutError
    ):
        return "transient"
    return "other"


def content_range_total(content_range: str | None) -> int | None:
    """The object size from ``Content-Range: bytes a-b/total``; None if absent or ``*``."""
    if not content_range:
        return None
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None
