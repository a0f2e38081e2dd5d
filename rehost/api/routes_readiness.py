"""Will the machine boot on its target? (issue 16): the readiness of a recovery point, from
one offline inspection of its disks, cached per point (the first call for a point takes the
appliance's start, 15–30 s; later ones read the cache)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from rehost.api.auth import Reader, VaultDep
from rehost.vault import readiness as vault_readiness

router = APIRouter(tags=["replicated items"])


@router.get("/machines/{name}/readiness")
def get_readiness(name: str, vault: VaultDep, _: Reader,
                  target: str | None = Query(None, description="A target's name (default: the machine's)"),
                  point: str = Query("latest", description="latest, latest-app-consistent or a point id"),
                  ) -> dict[str, Any]:
    """Each requirement of the target with pass / warn / fail and its fix, and the facts the
    inspection found (OS, kernels, initramfs drivers, network, fstab, swap, agents)."""
    return vault_readiness.readiness(vault, name, target=target, point=point).to_json()
