"""The ``azure:`` backend against a real blob service (Azurite, shared-key auth enforced).

The shared contract (test_conformance.py) runs here unchanged: its tests are imported into
this module, where the ``storage`` fixture below opens ``azure:`` storage through
``open_storage`` (so with the ``RetryingStorage`` wrapper users get), each test under a
prefix of its own in one container. Then what only an object store has: the three ways to
give a credential, a wrong key, the blob layout, a missing container, a dead endpoint, and a
whole repository round trip.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rehost.errors import BackendError, NotFound, UsageError
from rehost.process import free_port
from rehost.repository.storage import Kind, Storage, open_storage
from rehost.repository.storage.azure_blob import account_name
from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.repository.storage.test_conformance import *  # noqa: F403 - the shared contract, run on azure

PACK = hashlib.sha256(b"a pack").hexdigest()
ENV = ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")


def service(az: Azurite) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(az.connection_string)


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    name = "rehost-" + secrets.token_hex(4)
    service(azurite).create_container(name)
    return name


@pytest.fixture
def key_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Azurite's account key in the environment, and no other Azure credential."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    return azurite


def open_azure(az: Azurite, container: str, prefix: str) -> Storage:
    return open_storage(f"azure:{container}/{prefix}", account_url=az.account_url)


@pytest.fixture
def storage(key_env: Azurite, container: str) -> Iterator[Storage]:
    backend = open_azure(key_env, container, "t" + secrets.token_hex(6))
    yield backend
    backend.close()


def test_a_wrong_key_is_refused_clearly_without_showing_it(
    key_env: Azurite, container: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = base64.b64encode(secrets.token_bytes(64)).decode()
    monkeypatch.setenv("AZURE_STORAGE_KEY", wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as e:
        open_azure(key_env, container, "repo")
    message = str(e.value)
    assert "access denied" in message and "AZURE_STORAGE_KEY" in message, message
    assert not e.value.retryable  # a retry cannot fix a wrong key: fail at once
    for text in (message, caplog.text):
        assert wrong not in text
        assert ACCOUNT_KEY not in text


def test_a_connection_string_alone_names_the_endpoint_too(
    azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    storage = open_storage(f"azure:{container}/cs{secrets.token_hex(4)}")
    storage.save(Kind.INDEX, "i1", b"index")
    assert storage.load(Kind.INDEX, "i1") == b"index"
    assert ACCOUNT_KEY not in storage.location and azurite.account_url in storage.location


def test_a_sas_token_works_and_never_shows(
    azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT, container, account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas)
    caplog.set_level(logging.DEBUG)
    storage = open_azure(azurite, container, "sas" + secrets.token_hex(4))
    storage.save(Kind.POINTS, "p1", b"point")
    assert [i.name for i in storage.list(Kind.POINTS)] == ["p1"]
    storage.remove(Kind.POINTS, "p1")
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert signature not in caplog.text and signature not in storage.location


def test_no_credential_is_a_usage_error(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match="AZURE_STORAGE_KEY"):
        open_azure(azurite, "rehost", "repo")
    with pytest.raises(UsageError, match="account_url"):
        open_storage("azure:rehost/repo")


def test_credentials_are_not_options() -> None:
    """Options end up in the vault's configuration; keys must not."""
    with pytest.raises(UsageError, match=r"unknown option.*account_key.*supported: account_url"):
        open_storage("azure:rehost/repo", account_key="x")


@pytest.mark.parametrize("url", ["azure:", "azure:/", "azure:Bad_Container/x", "azure:a--b", "azure:ab"])
def test_bad_locations_are_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    with pytest.raises(UsageError):
        open_storage(url, account_url="http://127.0.0.1:9/devstoreaccount1")


@pytest.mark.parametrize(("url", "name"), [
    ("https://acct1.blob.core.windows.net", "acct1"),
    ("https://acct1.blob.core.windows.net/", "acct1"),
    ("http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1"),
    ("http://localhost:10000/devstoreaccount1/", "devstoreaccount1"),
])
def test_the_account_name_comes_from_the_url(url: str, name: str) -> None:
    assert account_name(url) == name


def test_a_missing_container_is_not_found(key_env: Azurite) -> None:
    with pytest.raises(NotFound, match="create it first"):
        open_azure(key_env, "no-such-container-" + secrets.token_hex(4), "repo")


def test_a_dead_endpoint_is_a_retryable_backend_error(key_env: Azurite, container: str) -> None:
    with pytest.raises(BackendError) as e:
        open_storage(f"azure:{container}", account_url=f"http://127.0.0.1:{free_port()}/{ACCOUNT}")
    assert e.value.retryable


def test_blobs_mirror_the_local_layout_and_foreign_blobs_are_not_listed(
    key_env: Azurite, container: str
) -> None:
    prefix = "layout" + secrets.token_hex(4)
    storage = open_azure(key_env, container, f"/{prefix}/")  # slashes around the prefix are ignored
    storage.save(Kind.CONFIG, "config", b"{}")
    storage.save(Kind.DATA, PACK, b"pack")
    storage.save(Kind.POINTS, "p1", b"point")
    client = service(key_env).get_container_client(container)
    # A name outside its fan-out folder, a nested blob, a blob of no kind.
    for junk in ("data/ab/cd", "index/a/b", "x"):
        client.upload_blob(f"{prefix}/{junk}", b"junk")
    names = {b.name for b in client.list_blobs(name_starts_with=f"{prefix}/")}
    assert {f"{prefix}/config", f"{prefix}/data/{PACK[:2]}/{PACK}", f"{prefix}/points/p1"} <= names
    assert [i.name for i in storage.list(Kind.DATA)] == [PACK]
    assert list(storage.list(Kind.INDEX)) == []
    assert storage.location == f"azure:{container}/{prefix} at {key_env.account_url}"


def test_a_repository_round_trip(
    key_env: Azurite, container: str, backup_and_restore: Callable[[Callable[[], Storage]], None]
) -> None:
    prefix = "repo" + secrets.token_hex(4)
    backup_and_restore(lambda: open_azure(key_env, container, prefix))
