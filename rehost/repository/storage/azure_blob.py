"""The ``azure:`` backend: a repository in an Azure Blob Storage container (block blobs).

``azure:CONTAINER[/PREFIX]`` with option ``account_url`` (``https://ACCOUNT.blob.core.windows.net``,
or Azurite's path style ``http://127.0.0.1:10000/devstoreaccount1``). The credential comes from
the environment only, never from options, so it never lands in a vault's configuration:

- ``AZURE_STORAGE_KEY``: the account key; the account name is taken from ``account_url``;
- ``AZURE_STORAGE_SAS_TOKEN``: a SAS (account or container; it needs read, write, list and
  delete);
- ``AZURE_STORAGE_CONNECTION_STRING``: alone it names the endpoint too; with ``account_url``
  only its key or SAS is used.

With ``account_url`` the key wins over the SAS, and both over the connection string.

Layout and semantics are the ``s3:`` backend's (``s3.py``): the local layout under the
prefix; ``save`` is one Put Blob with ``If-None-Match: *`` (``overwrite=False``), atomic for
readers and write-once even between hosts (409 ``BlobAlreadyExists`` -> ``AlreadyExists``);
ranged loads are one ranged GET whose ``Content-Range`` total tells a range past the end;
``remove`` is Delete Blob, which answers 404 for a missing blob. The SDK's own retries are
off and ``open_azure_storage`` wraps the backend in ``RetryingStorage``, for the same reason
as in ``s3.py`` (a hidden retry of a conditional save turns a lost reply into a spurious
``AlreadyExists``).

Secrets: error messages carry our own wording, the HTTP status and Azure's error code, never
the server's text or a URL's query; urllib3 logs request lines (SAS query included) at
DEBUG, so a filter redacts ``sig=`` there. The repository layer must not import
``rehost.targets``, so this is a small redaction of its own (``s3.redact``).
"""

from __future__ import annotations

import builtins
import contextlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
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
from rehost.repository.storage.contract import CONFIG_NAME, check_range, describe, range_bounds
from rehost.repository.storage.retry import RetryingStorage
from rehost.repository.storage.s3 import (
    RETRYABLE_STATUSES,
    ObjectLayout,
    content_range_total,
    parse_location,
    redact,
    shown_url,
)

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 10
#: Generous: a 16 MiB pack over a slow uplink must not look like a dead service.
READ_TIMEOUT_S = 120
ENV_KEY = "AZURE_STORAGE_KEY"
ENV_SAS = "AZURE_STORAGE_SAS_TOKEN"
ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
#: Error codes that mean "the credential is wrong or not allowed".
ACCESS_CODES = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch",
    "InsufficientAccountPermissions", "InvalidAuthenticationInfo",
})
#: Error codes Azure documents as transient.
RETRYABLE_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})

_CONTAINER = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")


def open_azure_storage(rest: str, options: dict[str, Any]) -> Storage:
    """The ``azure:`` opener of ``open_storage``: an ``AzureBlobStorage`` inside ``RetryingStorage``."""
    container, prefix = parse_location(rest, "azure", "azure:rehost/repo")
    return RetryingStorage(
        AzureBlobStorage(container, prefix, account_url=options.get("account_url"))
    )


class AzureBlobStorage:
    """A repository under ``prefix`` in an existing ``container``; rehost does not create
    containers (access level, immutability and lifecycle rules are the owner's decisions).

    Opening lists one blob, so a wrong credential or a mistyped container fails at once with
    a clear message (listing, unlike Get Container Properties, works with a container SAS).
    One SDK client is shared by all threads (the SDK's clients are thread-safe).
    """

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        account_url: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> None:
        if not _CONTAINER.fullmatch(container):
            raise UsageError(
                f"invalid Azure container name {container!r}: 3-63 characters of [a-z0-9-], "
                "starting and ending with a letter or digit, no '--'"
            )
        self.container = container
        self.prefix = prefix
        self.layout = ObjectLayout(prefix)
        env = os.environ if env is None else env
        self._secret_values = _secret_values(env)
        service, endpoint_shown = _service_client(account_url, env)
        self.location = redact(
            f"azure:{container}" + (f"/{prefix}" if prefix else "") + f" at {endpoint_shown}",
            *self._secret_values,
        )
        self._client: Any = service.get_container_client(container)
        _guard_urllib3_logs()
        if check:
            self._check_container()

    # -- the Storage protocol -------------------------------------------------------------

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        blob = self._client.get_blob_client(self.layout.key(kind, name))
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            blob.upload_blob(body, blob_type="BlockBlob", length=len(body), overwrite=False)
        except Exception as e:
            if _status(e) == 409 and _code(e) == "BlobAlreadyExists":
                raise AlreadyExists(f"{describe(kind, name)} already exists in {self.location}") from None
            raise self._error(e, "save", kind, name) from None

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        blob = self._client.get_blob_client(self.layout.key(kind, name))
        check_range(offset, length)
        if length == 0:  # the SDK cannot ask for an empty range; the size alone decides
            range_bounds(self.stat(kind, name).size, offset, length, kind=kind, name=name)
            return b""
        ranged = offset > 0 or length is not None
        try:
            downloader = blob.download_blob(offset=offset, length=length) if ranged else blob.download_blob()
            data: bytes = downloader.readall()
        except Exception as e:
            if _status(e) == 416:  # nothing at offset: past the end (damage) or exactly at it
                range_bounds(self.stat(kind, name).size, offset, length, kind=kind, name=name)
                return b""
            raise self._error(e, "load", kind, name) from None
        total = content_range_total(downloader.properties.content_range)
        if total is None:  # an empty blob is sent without a Content-Range
            total = len(data) if not ranged else self.stat(kind, name).size
        start, end = range_bounds(total, offset, length, kind=kind, name=name)
        if len(data) != end - start:
            raise IntegrityError(
                f"short read of {describe(kind, name)} in {self.location}: "
                f"{len(data)} of {end - start} bytes"
            )
        return data

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        blob = self._client.get_blob_client(self.layout.key(kind, name))
        try:
            props = blob.get_blob_properties()
        except Exception as e:
            raise self._error(e, "stat", kind, name) from None
        return ObjectInfo(kind, name, int(props.size))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        if kind is Kind.CONFIG:
            with contextlib.suppress(ObjectNotFound):
                yield self.stat(kind, CONFIG_NAME)
            return
        try:
            for props in self._client.list_blobs(name_starts_with=self.layout.kind_prefix(kind)):
                name = self.layout.name(kind, props.name)
                if name is not None:
                    yield ObjectInfo(kind, name, int(props.size))
        except RehostError:
            raise
        except Exception as e:
            raise self._error(e, "list", kind, None) from None

    def remove(self, kind: Kind, name: str) -> None:
        blob = self._client.get_blob_client(self.layout.key(kind, name))
        try:
            blob.delete_blob()
        except Exception as e:
            raise self._error(e, "remove", kind, name) from None

    def room_to_defer(self, nbytes: int) -> bool:
        return False  # a network, maybe a bill: compressed before it is sent

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    # -- helpers --------------------------------------------------------------------------

    def _check_container(self) -> None:
        try:
            pages = self._client.list_blobs(
                name_starts_with=self.layout.base + CONFIG_NAME, results_per_page=1
            ).by_page()
            next(iter(pages), None)
        except Exception as e:
            if _code(e) == "ContainerNotFound":
                raise NotFound(
                    f"no Azure container {self.container!r} in {self.location.partition(' at ')[2]}: "
                    "create it first (rehost does not create containers)"
                ) from None
            raise self._error(e, "open", None, None) from None

    def _error(self, e: Exception, op: str, kind: Kind | None, name: str | None) -> RehostError:
        """An Azure SDK exception as the rehost error the other backends would raise."""
        if op == "open":
            where = f"cannot open {self.location}"
        elif name is not None and kind is not None:
            where = f"cannot {op} {describe(kind, name)} in {self.location}"
        else:
            where = f"cannot {op} {kind.value + '/' if kind else ''} in {self.location}"
        status, code = _status(e), _code(e)
        if code == "ContainerNotFound":
            return BackendError(f"{where}: the container {self.container!r} does not exist")
        if status == 404 and kind is not None and name is not None:
            return ObjectNotFound(f"{describe(kind, name)} not found in {self.location}")
        if status in (401, 403) or code in ACCESS_CODES or _is(e, "ClientAuthenticationError"):
            return BackendError(
                f"{where}: access denied ({code or status}); check the credential in "
                f"{ENV_KEY}, {ENV_SAS} or {ENV_CONNECTION_STRING} (its account, expiry and "
                "permissions)"
            )
        if _is(e, "ServiceRequestError", "ServiceResponseError"):  # no connection, timeouts
            return BackendError(redact(f"{where}: {type(e).__name__}", *self._secret_values),
                                retryable=True)
        if _is(e, "HttpResponseError"):
            retryable = (status is None  # a reply cut short
                         or status in RETRYABLE_STATUSES or status >= 500 or code in RETRYABLE_CODES)
            text = f"{where}: {code or 'error'} (HTTP {status})"
            return BackendError(redact(text, *self._secret_values), retryable=retryable)
        if isinstance(e, ConnectionError | TimeoutError):
            return BackendError(f"{where}: {type(e).__name__}", retryable=True)
        return BackendError(redact(f"{where}: {type(e).__name__}: {e}", *self._secret_values))


def account_name(account_url: str) -> str:
    """The storage account an account URL names: the first label of the host
    (``ACCOUNT.blob.core.windows.net``), or the first path segment for path-style URLs
    (Azurite and other emulators on an IP address or localhost)."""
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    path_style = host == "localhost" or "." not in host
    try:
        ipaddress.ip_address(host)
        path_style = True
    except ValueError:
        pass
    name = parts.path.strip("/").split("/")[0] if path_style else host.split(".")[0]
    if not name:
        raise UsageError(f"cannot tell the storage account from account_url {shown_url(account_url)!r}")
    return name


def _service_client(account_url: str | None, env: Mapping[str, str]) -> tuple[Any, str]:
    """The SDK's service client for the environment's credential, and the URL to show."""
    try:
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise UsageError("azure: storage needs azure-storage-blob: pip install azure-storage-blob") from None
    # Retries: RetryingStorage's (module doc). Timeouts: seconds, for connect and each read.
    options: dict[str, Any] = {"retry_total": 0, "connection_timeout": CONNECTION_TIMEOUT_S,
                               "read_timeout": READ_TIMEOUT_S}
    key, sas = env.get(ENV_KEY), env.get(ENV_SAS)
    conn = env.get(ENV_CONNECTION_STRING)
    conn_fields = _parse_connection_string(conn) if conn else {}
    if account_url:
        if not re.match(r"https?://", account_url):
            raise UsageError(f"account_url must be an http(s) URL, not {shown_url(account_url)!r}")
        credential: Any
        if key:
            credential = AzureNamedKeyCredential(account_name(account_url), key)
        elif sas:
            credential = AzureSasCredential(sas.lstrip("?"))
        elif conn_fields.get("accountkey"):
            credential = AzureNamedKeyCredential(
                conn_fields.get("accountname") or account_name(account_url), conn_fields["accountkey"]
            )
        elif conn_fields.get("sharedaccesssignature"):
            credential = AzureSasCredential(conn_fields["sharedaccesssignature"].lstrip("?"))
        else:
            raise UsageError(
                f"no Azure credential: set {ENV_KEY} (the account key), {ENV_SAS} or "
                f"{ENV_CONNECTION_STRING} in the environment"
            )
        return BlobServiceClient(account_url, credential=credential, **options), shown_url(account_url)
    if conn:
        try:
            service = BlobServiceClient.from_connection_string(conn, **options)
        except ValueError:
            raise UsageError(f"{ENV_CONNECTION_STRING} is not a valid connection string") from None
        return service, shown_url(service.url)
    raise UsageError(
        "azure: needs account_url=https://ACCOUNT.blob.core.windows.net with "
        f"{ENV_KEY} or {ENV_SAS} in the environment, or {ENV_CONNECTION_STRING}"
    )


def _parse_connection_string(conn: str) -> dict[str, str]:
    """``Key=Value;...`` with lowercase keys (values may hold ``=``: base64 keys, SAS)."""
    fields: dict[str, str] = {}
    for part in conn.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            fields[k.strip().lower()] = v.strip()
    return fields


def _secret_values(env: Mapping[str, str]) -> builtins.list[str]:
    """Every credential value a message must not show."""
    found = [env.get(ENV_KEY, ""), env.get(ENV_SAS, "").lstrip("?"), env.get(ENV_CONNECTION_STRING, "")]
    fields = _parse_connection_string(found[2]) if found[2] else {}
    found += [fields.get("accountkey", ""), fields.get("sharedaccesssignature", "").lstrip("?")]
    return [s for s in found if s]


def _is(e: Exception, *names: str) -> bool:
    """True if ``e`` is an azure.core exception of one of ``names`` (checked by class name so
    the SDK is imported only when a backend opens)."""
    return any(c.__name__ in names and c.__module__.startswith("azure.") for c in type(e).__mro__)


def _status(e: Exception) -> int | None:
    status = getattr(e, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _code(e: Exception) -> str:
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code) or "")


class _RedactingFilter(logging.Filter):
    """urllib3 logs every request line, SAS query included, at DEBUG: redact it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


_guard_lock = threading.Lock()


def _guard_urllib3_logs() -> None:
    with _guard_lock:
        logger = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())
