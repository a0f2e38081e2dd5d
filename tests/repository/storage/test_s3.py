"""The ``s3:`` backend against a real S3 server (SeaweedFS, keys required).

The shared contract (test_conformance.py) runs here unchanged: its tests are imported into
this module, where the ``storage`` fixture below opens ``s3:`` storage through
``open_storage`` (so with the ``RetryingStorage`` wrapper users get), each test under a
prefix of its own in one bucket. Then what only an object store has: credentials,
the key layout, a missing bucket, a dead endpoint, and a whole repository round trip.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.errors import BackendError, NotFound, UsageError
from rehost.process import free_port
from rehost.repository.storage import Kind, Storage, open_storage
from rehost.testkit.seaweedfs import SeaweedFS
from tests.repository.storage.test_conformance import *  # noqa: F403 - the shared contract, run on s3

PACK = hashlib.sha256(b"a pack").hexdigest()


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.create_bucket("rehost-" + secrets.token_hex(4))


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SeaweedFS:
    """The server's keys in the environment, and nothing of the host's AWS setup."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    return seaweedfs


def open_s3(server: SeaweedFS, bucket: str, prefix: str) -> Storage:
    return open_storage(f"s3:{bucket}/{prefix}", endpoint=server.endpoint)


@pytest.fixture
def storage(s3_env: SeaweedFS, bucket: str) -> Iterator[Storage]:
    backend = open_s3(s3_env, bucket, "t" + secrets.token_hex(6))
    yield backend
    backend.close()


def test_the_server_refuses_anonymous_requests(seaweedfs: SeaweedFS, bucket: str) -> None:
    """The test service really checks keys, so the credential tests below mean something."""
    import boto3
    import botocore
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=seaweedfs.endpoint, region_name="us-east-1",
        config=Config(signature_version=botocore.UNSIGNED, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.list_objects_v2(Bucket=bucket)
    client.close()


def test_a_wrong_secret_key_is_refused_clearly_without_showing_it(
    s3_env: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong" + secrets.token_urlsafe(24)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as e:
        open_s3(s3_env, bucket, "repo")
    message = str(e.value)
    assert "access denied" in message and "AWS_SECRET_ACCESS_KEY" in message, message
    assert not e.value.retryable  # a retry cannot fix a wrong key: fail at once
    for text in (message, caplog.text):
        assert wrong not in text
        assert s3_env.secret_key not in text


def test_no_credentials_at_all_is_a_usage_error(
    s3_env: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UsageError, match="AWS_ACCESS_KEY_ID"):
        open_s3(s3_env, bucket, "repo")


def test_credentials_are_not_options() -> None:
    """Options end up in the vault's configuration; keys must not."""
    with pytest.raises(UsageError, match=r"unknown option.*secret_key.*supported: .*endpoint"):
        open_storage("s3:bucket/repo", secret_key="x")


@pytest.mark.parametrize("url", ["s3:", "s3:/", "s3:Bad_Bucket/x", "s3:ab"])
def test_bad_locations_are_refused(url: str) -> None:
    with pytest.raises(UsageError):
        open_storage(url, endpoint="http://127.0.0.1:9")


def test_a_missing_bucket_is_not_found(s3_env: SeaweedFS) -> None:
    with pytest.raises(NotFound, match="create it first"):
        open_s3(s3_env, "no-such-bucket-" + secrets.token_hex(4), "repo")


def test_a_dead_endpoint_is_a_retryable_backend_error(s3_env: SeaweedFS, bucket: str) -> None:
    with pytest.raises(BackendError) as e:
        open_storage(f"s3:{bucket}", endpoint=f"http://127.0.0.1:{free_port()}")
    assert e.value.retryable


def test_keys_mirror_the_local_layout_and_foreign_keys_are_not_listed(
    s3_env: SeaweedFS, bucket: str
) -> None:
    prefix = "layout" + secrets.token_hex(4)
    storage = open_s3(s3_env, bucket, f"/{prefix}/")  # slashes around the prefix are ignored
    storage.save(Kind.CONFIG, "config", b"{}")
    storage.save(Kind.DATA, PACK, b"pack")
    storage.save(Kind.POINTS, "p1", b"point")
    client = s3_env.client()
    # A name outside its fan-out folder, a folder marker, a nested key, a key of no kind.
    for junk in ("data/ab/cd", "data/", "index/a/b", "x"):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{junk}", Body=b"junk")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]}
    client.close()
    assert {f"{prefix}/config", f"{prefix}/data/{PACK[:2]}/{PACK}", f"{prefix}/points/p1"} <= keys
    assert [i.name for i in storage.list(Kind.DATA)] == [PACK]
    assert list(storage.list(Kind.INDEX)) == []
    assert storage.location == f"s3:{bucket}/{prefix} at {s3_env.endpoint}"


def test_a_repository_round_trip(
    s3_env: SeaweedFS, bucket: str, backup_and_restore: Callable[[Callable[[], Storage]], None]
) -> None:
    prefix = "repo" + secrets.token_hex(4)
    backup_and_restore(lambda: open_s3(s3_env, bucket, prefix))
