"""Allowed roots: where a path from the API may lead, decided after symlinks are followed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.vault import roots
from rehost.vault.roots import PathNotAllowed
from rehost.vault.vault import Vault


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.init(tmp_path / "vault")
    yield v
    v.close()


def test_inside_means_under_the_folder_not_a_name_that_starts_alike(vault: Vault) -> None:
    base = vault.root.absolute()
    (base / "imports").mkdir()
    (base / "importsevil").mkdir()
    assert roots.confine(vault, base / "imports" / "a.raw", "image") == base / "imports" / "a.raw"
    new = base / "targets" / "new" / "dir"
    assert roots.confine(vault, new, "folder") == new
    with pytest.raises(PathNotAllowed, match="outside"):
        roots.confine(vault, base / "importsevil" / "a.raw", "image")
    with pytest.raises(PathNotAllowed, match="outside"):
        roots.confine(vault, base / "imports" / ".." / "vault.db", "image")
    with pytest.raises(UsageError, match="absolute"):
        roots.confine(vault, "imports/a.raw", "image")


def test_a_symlinked_root_and_links_inside_it(vault: Vault, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    roots.allow_root(vault, tmp_path / "alias")  # kept resolved
    assert roots.allowed_roots(vault)[-1].path == real
    assert roots.confine(vault, tmp_path / "alias" / "sub" / "d.raw", "image") == real / "sub" / "d.raw"
    (real / "out").symlink_to(tmp_path)  # a link inside the root that leaves it
    with pytest.raises(PathNotAllowed, match=f"a symlink to {tmp_path}/x"):
        roots.confine(vault, real / "out" / "x", "image")
    roots.deny_root(vault, tmp_path / "alias")
    with pytest.raises(PathNotAllowed):
        roots.confine(vault, real / "sub" / "d.raw", "image")
