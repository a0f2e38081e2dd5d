"""The whole migration lifecycle with the replica repository in an object store: ``s3://`` on
SeaweedFS and ``azure://`` on Azurite, both real services with keys required.

init --repository URL, add an image source, replicate, write on the source, replicate the
delta, test failover + cleanup, failover, complete. Every point is exported and compared byte
for byte with the source; the failed-over machine boots from a point served over NBD
straight from the object store (instant recovery) and its hydrated disk is compared too.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import set_marker
from tests.cli_helpers import qemu_img_compare, rehost

#: What a host's own cloud setup could add to a test's environment; each test sets its own.
_HOST_CLOUD_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
)


@dataclass(frozen=True)
class ObjectRepository:
    url: str  # what `rehost init --repository` takes
    env: dict[str, str]  # the credential, for every rehost process


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectRepository:
    server = request.getfixturevalue("seaweedfs")
    bucket = server.create_bucket("rehost-life-" + secrets.token_hex(4))
    env = {**server.env, "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    return ObjectRepository(f"s3://{bucket}/vault?endpoint={server.endpoint}", env)


def _azure(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectRepository:
    from azure.storage.blob import BlobServiceClient

    from rehost.testkit.azurite import ACCOUNT_KEY

    az = request.getfixturevalue("azurite")
    container = "rehost-life-" + secrets.token_hex(4)
    with BlobServiceClient.from_connection_string(az.connection_string) as service:
        service.create_container(container)
    return ObjectRepository(f"azure://{container}/vault?account_url={az.account_url}",
                            {"AZURE_STORAGE_KEY": ACCOUNT_KEY})


@pytest.fixture(params=["s3", "azure"])
def object_repository(request: pytest.FixtureRequest, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> ObjectRepository:
    for var in _HOST_CLOUD_ENV:
        monkeypatch.delenv(var, raising=False)
    return _s3(request, tmp_path) if request.param == "s3" else _azure(request, tmp_path)


def _processes(needle: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", needle], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    for line in _processes(str(tmp_path)):  # never leave a VM or a point server behind
        subprocess.run(["kill", "-9", line.split()[0]], check=False)


@pytest.mark.slow
def test_lifecycle_with_the_repository_in_an_object_store(
    object_repository: ObjectRepository, tiny_image: Path, tmp_path: Path, need_qemu: None,
    no_leftovers: None,
) -> None:
    repo, env = object_repository, object_repository.env
    vault, target = tmp_path / "vault", tmp_path / "target"
    started = time.monotonic()

    def run(*args: str, check: bool = True) -> object:
        return rehost(vault, *args, env=env, check=check)

    set_marker(tiny_image, "first")
    rehost(vault, "init", "--repository", repo.url, env=env)
    assert not (vault / "repo").exists() or not any((vault / "repo").iterdir())
    rehost(vault, "target", "add-local", "here", "--path", str(target), env=env)
    rehost(vault, "source", "add-image", "web", str(tiny_image), env=env)
    p1 = rehost(vault, "replicate", "web", "--json", env=env).json()["point"]
    first = tmp_path / "first.raw"
    rehost(vault, "export", "web", "--point", p1, "--output", str(first), env=env)
    assert qemu_img_compare(first, tiny_image)

    set_marker(tiny_image, "second")  # a write on the source
    assert not qemu_img_compare(first, tiny_image)
    r2 = rehost(vault, "replicate", "web", "--json", env=env).json()
    print(r2)
    second = tmp_path / "second.raw"
    rehost(vault, "export", "web", "--point", r2["point"], "--output", str(second), env=env)
    assert qemu_img_compare(second, tiny_image)

    t = time.monotonic()
    job = rehost(vault, "failover", "web", "--test", "--json", env=env).json()
    print("test failover", time.monotonic() - t)
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}
    assert "marker=second" in steps["verify_boot"]["detail"], steps["verify_boot"]
    rehost(vault, "failover", "web", "--cleanup", env=env)
    assert not (target / "web-test").exists()
    assert _processes(str(vault)) == []

    t = time.monotonic()
    job = rehost(vault, "failover", "web", "--shutdown-source", "--json", env=env).json()
    print("failover", time.monotonic() - t)
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}
    assert "marker=second" in steps["verify_boot"]["detail"], steps["verify_boot"]
    vm_disk = target / "web" / "disk0.qcow2"
    assert qemu_img_compare(vm_disk, tiny_image, "qcow2", "raw")

    rehost(vault, "complete", "web", env=env)
    machine = rehost(vault, "machines", "--json", env=env).json()[0]
    assert machine["state"] == "migration_completed" and machine["points"] == 0
    print("total", time.monotonic() - started)
