"""A page blob in a storage account: the few operations a replica sync needs.

``azure-storage-blob`` is imported when a ``PageBlob`` is made, not with this module: each
Azure package costs 0.2-0.35 s to import, and most rehost commands never talk to Azure.

Retries: the storage SDK's own policy retries 408 and 5xx but not 429, and sleeps 15 s
first. ``PageBlob`` installs a subclass of it (so the storage pipeline's per-request
settings keep working) that also retries 429, waits ``backoff`` seconds doubling each time
(or the server's Retry-After, up to 60 s, when longer), and counts every retry, so a sync
can report them.

Secrets: an account key or a SAS token must never reach a log, an exception or a report.
Every error leaves this module as a ``BackendError`` whose text went through ``redact``:
query strings (where a SAS signature lives) are dropped and known secrets removed.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from rehost.errors import BackendError

#: statuses worth another try: timeout, throttling, server errors
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

_QUERY = re.compile(r"\?[^\s'\"<>]*")
_SIG = re.compile(r"(?i)\b(sig|signature|accountkey)=[^&\s;'\"<>]*")


def redact(text: str, *secrets: str) -> str:
    """``text`` without URL query strings, ``sig=``/``AccountKey=`` values or ``secrets``."""
    text = _QUERY.sub("?<query removed>", text)
    text = _SIG.sub(lambda m: f"{m.group(1)}:<removed>", text)
    for s in secrets:
        if s:
            text = text.replace(s, "<secret removed>")
    return text


class _RedactingFilter(logging.Filter):
    """urllib3 logs every request line at DEBUG, SAS query included: redact it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


_guarded = threading.Lock()


def _guard_logs() -> None:
    with _guarded:
        log = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, _RedactingFilter) for f in log.filters):
            log.addFilter(_RedactingFilter())


def strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class BlobEndpoint:
    """Where replica blobs live: a storage account's blob endpoint and a container.

    ``credential``: what ``azure-storage-blob`` takes (an account key as
    ``{"account_name", "account_key"}``, a SAS token string, a token credential from
    ``azure-identity``), or None when ``account_url`` carries a SAS. Never shown.
    """

    account_url: str
    container: str
    credential: Any = field(default=None, repr=False, compare=False)

    def secrets(self) -> tuple[str, ...]:
        c = self.credential
        if isinstance(c, dict):
            return tuple(str(v) for k, v in c.items() if k != "account_name")
        if isinstance(c, str):
            sig = parse_qs(c.lstrip("?")).get("sig", [])
            return (c, *sig, *(quote(v, safe="") for v in sig))
        return ()


@dataclass(frozen=True)
class BlobState:
    size: int
    metadata: dict[str, str]


def _seconds(retry_after: str | None) -> float:
    """A Retry-After in seconds (at most 60); 0 when absent or a date."""
    try:
        return min(60.0, max(0.0, float(retry_after or 0)))
    except ValueError:
        return 0.0


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def _retry_policy(counter: _Counter, retries: int, backoff: float) -> Any:
    from azure.core.exceptions import AzureError
    from azure.storage.blob import ExponentialRetry
    from azure.storage.blob._shared.authentication import AzureSigningError  # the SDK's own check

    class CountingRetry(ExponentialRetry):  # type: ignore[misc]
        """The storage retry policy, with 429 among the retried answers and a count."""

        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            # doubling from ``backoff``, at most 30 s, +-20 % so parallel requests spread out
            return min(30.0, backoff * 2.0 ** int(settings["count"])) * random.uniform(0.8, 1.2)

        def send(self, request: Any) -> Any:
            settings = self.configure_retries(request)
            while True:
                try:
                    response = self.next.send(request)
                except AzureError as err:
                    if isinstance(err, AzureSigningError) or not self.increment(
                        settings, request=request.http_request, error=err
                    ):
                        raise
                else:
                    status = response.http_response.status_code
                    if status not in RETRY_STATUSES or not self.increment(
                        settings, request=request.http_request, response=response.http_response
                    ):
                        response.http_response.location_mode = settings["mode"]  # as the SDK's own
                        return response
                    settings["retry_after"] = _seconds(response.http_response.headers.get("Retry-After"))
                counter.add()
                delay = max(self.get_backoff_time(settings), settings.pop("retry_after", 0.0))
                request.context.transport.sleep(delay)

    return CountingRetry(retry_total=retries, retry_status=retries, retry_connect=retries,
                         retry_read=retries)


class PageBlob:
    """One page blob, thread-safe for concurrent page writes. Counts requests and retries."""

    def __init__(self, endpoint: BlobEndpoint, name: str, *, retries: int = 6, backoff: float = 0.5,
                 timeout: float = 120.0) -> None:
        from azure.storage.blob import BlobServiceClient

        _guard_logs()
        self.endpoint = endpoint
        self.name = name
        self._retries = _Counter()
        self._requests = _Counter()
        service = BlobServiceClient(
            endpoint.account_url, credential=endpoint.credential,
            retry_policy=_retry_policy(self._retries, retries, backoff),
            connection_timeout=20, read_timeout=timeout,
        )
        self._container = service.get_container_client(endpoint.container)
        self._blob = self._container.get_blob_client(name)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PageBlob:
        """A blob named by one URL with its SAS (what a managed disk's grant-access returns:
        ``https://md-....blob.storage.azure.net/<container>/<blob>?sv=...&sig=...``)."""
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        head, name = path.rsplit("/", 1)
        base, container = head.rsplit("/", 1)
        account_url = urlunsplit((parts.scheme, parts.netloc, base, "", ""))
        return cls(BlobEndpoint(account_url, container, parts.query or None), name, **options)

    @property
    def url(self) -> str:
        """The blob's URL without any query (no SAS): safe to log and store."""
        return strip_query(str(self._blob.url))

    @property
    def retries(self) -> int:
        return self._retries.value

    @property
    def requests(self) -> int:
        return self._requests.value

    def _call(self, what: str, fn: Any, *args: Any, tolerate: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Run one SDK call: counted, errors redacted into ``BackendError``; an answer with
        a status in ``tolerate`` (404: missing, 409: exists) returns None instead."""
        from azure.core.exceptions import AzureError, HttpResponseError

        self._requests.add()
        try:
            return fn(*args, **kwargs)
        except AzureError as e:
            status = e.status_code if isinstance(e, HttpResponseError) else None
            if status in tolerate:
                return None
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = redact(f"{what} {self.url}: {first}", *self.endpoint.secrets())
            retryable = status is None or status in RETRY_STATUSES
            raise BackendError(msg, retryable=retryable) from None

    def state(self) -> BlobState | None:
        """Size and metadata, or None if the blob does not exist."""
        p = self._call("read properties of", self._blob.get_blob_properties, tolerate=(404,))
        return None if p is None else BlobState(int(p.size), dict(p.metadata or {}))

    def create(self, size: int, metadata: dict[str, str]) -> None:
        # 409: it exists; 403: a SAS for the container may not create it (if it is really
        # missing, creating the blob says so)
        self._call("create the container of", self._container.create_container, tolerate=(409, 403))
        self._call("create", self._blob.create_page_blob, size, metadata=metadata)

    def resize(self, size: int) -> None:
        self._call("resize", self._blob.resize_blob, size)

    def set_metadata(self, metadata: dict[str, str]) -> None:
        self._call("set metadata of", self._blob.set_blob_metadata, metadata)

    def put(self, offset: int, data: bytes) -> None:
        self._call("write pages of", self._blob.upload_page, data, offset=offset, length=len(data))

    def clear(self, offset: int, length: int) -> None:
        self._call("clear pages of", self._blob.clear_page, offset=offset, length=length)

    def snapshot(self, metadata: dict[str, str]) -> str:
        """Take a snapshot carrying ``metadata``; returns its id (a timestamp)."""
        r = self._call("snapshot", self._blob.create_snapshot, metadata=metadata)
        return str(r["snapshot"])

    def snapshots(self) -> dict[str, dict[str, str]]:
        """The blob's snapshots: id -> metadata."""
        def listing() -> dict[str, dict[str, str]]:
            found = self._container.list_blobs(name_starts_with=self.name, include=["snapshots", "metadata"])
            return {str(b.snapshot): dict(b.metadata or {}) for b in found
                    if b.name == self.name and b.snapshot}
        return self._call("list snapshots of", listing)  # type: ignore[no-any-return]

    def read(self, offset: int, length: int, snapshot: str | None = None) -> bytes:
        client = self._container.get_blob_client(self.name, snapshot=snapshot)
        data = self._call("read", lambda: client.download_blob(offset=offset, length=length).readall())
        return bytes(data)

    def source_url(self, snapshot: str | None = None) -> str:
        """The blob's (or a snapshot's) URL as a copy source: with its SAS, if it has one.
        Secret: never log it."""
        return str(self._container.get_blob_client(self.name, snapshot=snapshot).url)

    def copy_from(self, source_url: str, *, timeout: float = 3600.0, poll: float = 2.0) -> None:
        """Copy a blob (a snapshot: ``source_url(snapshot)``) into this one, which it creates or
        replaces, and wait until the copy is done (Azure copies asynchronously)."""
        import time

        r = self._call("copy into", self._blob.start_copy_from_url, source_url)
        status = str(r.get("copy_status"))
        deadline = time.monotonic() + timeout
        while status == "pending":
            if time.monotonic() > deadline:
                raise BackendError(f"copy into {self.url} still pending after {timeout:.0f}s", retryable=True)
            time.sleep(poll)
            status = str(self._call("read the copy status of", self._blob.get_blob_properties).copy.status)
        if status != "success":
            raise BackendError(f"copy into {self.url} ended {status}", retryable=status == "aborted")

    def delete_snapshot(self, snapshot: str) -> None:
        client = self._container.get_blob_client(self.name, snapshot=snapshot)
        self._call("delete a snapshot of", client.delete_blob, tolerate=(404,))

    def delete(self) -> None:
        self._call("delete", self._blob.delete_blob, delete_snapshots="include", tolerate=(404,))
