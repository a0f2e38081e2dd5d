"""Prepare infrastructure and enable replication from the dashboard, in headless Chromium: from
an empty vault (tokens only) to a protected machine, a physical server's agent turning up, and
forms that show the API's refusals next to the field they name."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rehost.api.tokens import create_token
from rehost.process import free_port
from rehost.testkit.tinylinux import set_marker
from rehost.vault import agents, policies, roots
from rehost.vault.vault import Vault
from tests.api.portal import ROLES, MiB, kill_leftovers, live_server, make_disk, portal_for
from tests.cli_helpers import REPO
from tests.web.conftest import Shots
from tests.web.test_dashboard import Site, clean_up_test, sign_in, wait_job


def empty_vault(root: Path, *allowed: Path) -> dict[str, str]:
    """A vault with nothing but a token per role; the API may use ``allowed`` besides the
    default roots (``<vault>/imports``, ``<vault>/targets``), as ``rehost config allow-root``."""
    vault = Vault.init(root / "vault")
    try:
        for folder in allowed:
            roots.allow_root(vault, folder)
        return {role: create_token(vault, f"{role}-token", role)[1] for role in ROLES}
    finally:
        vault.close()


@contextmanager
def empty_site(root: Path, *allowed: Path) -> Iterator[Site]:
    tokens = empty_vault(root, *allowed)
    with portal_for(root, tokens) as portal, live_server(portal.app) as url:
        yield Site(url, tokens)


def open_setup(browser: Any, site: Site) -> Any:
    page = sign_in(browser, site, "admin")
    page.click("#nav-setup")
    page.wait_for_url(f"{site.url}/ui/setup")
    page.wait_for_selector("#source-form .options .field")  # drawn from GET /sources/kinds
    return page


def field_error(page: Any, form: str, field: str) -> str:
    return str(page.inner_text(f"#{form} .field[data-field={field}] .field-error")).strip()


def test_refusals_show_inline_then_two_machines_are_enabled(browser: Any, tmp_path: Path,
                                                             shots: Shots) -> None:
    """An invalid policy (negative RPO, retention shorter than the crash interval), a path
    outside the allowed roots and a missing option are shown next to their field and create
    nothing; corrected, the same forms add two machines, a target and a policy, and an operator
    enables both at once. Readers get no buttons, operators no source forms."""
    outside = make_disk(tmp_path / "outside.raw", MiB)  # the vault allows only its default roots
    with empty_site(tmp_path) as site:
        page = open_setup(browser, site)
        # the forms come from the kinds the API describes: the image source's paths, the local target's path
        assert page.locator("#source-form textarea[name=paths]").count() == 1
        assert page.locator("#target-form input[name=path]").count() == 1
        page.select_option("#target-kind", "azure")
        assert page.locator("#target-form input[name=storage_account]").count() == 1
        page.select_option("#target-kind", "local")

        page.fill("#policy-form input[name=name]", "bad")
        page.fill("#policy-form input[name=rpo_threshold]", "-5m")
        page.click("#create-policy")
        page.wait_for_selector("#policy-form .field[data-field=rpo_threshold] .field-error:not([hidden])")
        # the same words as the CLI's (rehost policy create bad --rpo-threshold -5m)
        said = field_error(page, "policy-form", "rpo_threshold")
        assert said == "--rpo-threshold must be positive, not '-5m'"
        shots.take(page, "negative-rpo")

        page.fill("#policy-form input[name=rpo_threshold]", "5m")
        page.fill("#policy-form input[name=retention]", "10s")
        page.click("#create-policy")
        page.wait_for_selector("#policy-form .field[data-field=retention] .field-error:not([hidden])")
        message = field_error(page, "policy-form", "retention")
        assert message == ("--retention (10s) must be at least the --crash-consistent-every (30s): "
                           "every point would expire before the next is taken")
        assert not page.locator("#policy-form .field[data-field=rpo_threshold] .field-error").is_visible()
        shots.take(page, "retention-shorter-than-crash-interval")

        # a path outside the allowed roots: 403, shown at the option it came from
        page.fill("#source-form input[name=name]", "db")
        page.fill("#source-form textarea[name=paths]", str(outside))
        page.click("#add-source")
        page.wait_for_selector("#source-form .field[data-field=paths] .field-error:not([hidden])")
        assert "outside the folders the API may use" in field_error(page, "source-form", "paths")
        page.fill("#target-form input[name=name]", "here")
        page.click("#add-target")
        page.wait_for_selector("#target-form .field[data-field=path] .field-error:not([hidden])")
        assert "needs --path" in field_error(page, "target-form", "path")
        shots.take(page, "source-and-target-refused")

        vault = Vault.open(tmp_path / "vault")
        try:  # nothing was created, and the CLI's service says the same
            assert policies.list_policies(vault) == []
            with pytest.raises(Exception, match=re.escape(message)):
                policies.create_policy(vault, "bad", retention="10s")
        finally:
            vault.close()
        page.goto(f"{site.url}/ui/infrastructure")
        assert "None yet" in page.inner_text("#sources") and "None yet" in page.inner_text("#policies")

        # corrected, the same forms succeed: two machines from the vault's imports/, its targets/
        page.click("#policies >> text=create a policy")
        page.wait_for_selector("#source-form .options .field")
        imports = tmp_path / "vault" / "imports"
        imports.mkdir(exist_ok=True)
        for name in ("db", "web"):
            page.fill("#source-form input[name=name]", name)
            page.fill("#source-form textarea[name=paths]", str(make_disk(imports / f"{name}.raw", MiB)))
            page.click("#add-source")
            page.wait_for_selector(f"#source-result >> text=Added {name} (image)")
        page.fill("#target-form input[name=name]", "here")
        page.fill("#target-form input[name=path]", str(tmp_path / "vault" / "targets" / "here"))
        page.click("#add-target")
        page.wait_for_selector("#verify-badge.healthy", timeout=30_000)
        page.fill("#policy-form input[name=name]", "standard")
        page.fill("#policy-form input[name=retention]", "2h")
        page.click("#create-policy")
        page.wait_for_selector("#policy-result:not([hidden])")
        assert not page.locator("#policy-form .field-error").first.is_visible()

        operator = sign_in(browser, site, "operator")  # enables replication; sources and policies need admin
        assert operator.inner_text("#nav-setup") == "Enable replication"
        operator.goto(f"{site.url}/ui/setup")
        assert operator.locator("#source-form").count() == 0
        assert operator.locator("#setup-needs-admin").count() == 1
        operator.goto(f"{site.url}/ui/enable")  # several machines at once
        operator.check("#pick-db")
        operator.check("#pick-web")
        operator.select_option("#enable-policy", "standard")
        operator.select_option("select[data-source-net=default]", "isolated")
        operator.uncheck("input[name=replicate]")
        shots.take(operator, "enable-two")
        operator.click("#enable-start")
        operator.wait_for_url(f"{site.url}/ui/items")
        for name in ("db", "web"):
            assert "standard" in operator.inner_text(f"tr[data-item={name}]")
            machine = operator.request.get(f"{site.url}/api/v1/machines/{name}").json()
            assert machine["network_map"] == {"default": "isolated"} and machine["assigned_target"] == "here"

        reader = sign_in(browser, site, "reader")
        assert reader.locator("#nav-setup").count() == 0
        reader.goto(f"{site.url}/ui/enable")
        assert reader.locator("#enable-start").count() == 0
        assert reader.locator("input[type=checkbox]").count() == 0


def test_a_physical_server_shows_its_passphrase_then_its_agent(browser: Any, tmp_path: Path,
                                                              shots: Shots) -> None:
    """The page shows the one-time passphrase and the agent command; the test runs that command
    (``rehost-agent register``, as ``python -m rehost.agent``) and the page shows the agent."""
    disk = make_disk(tmp_path / "sda.raw", 2 * MiB)
    tokens = empty_vault(tmp_path)
    vault = Vault.open(tmp_path / "vault")
    enrollment = agents.start_enrollment(vault, "127.0.0.1", free_port(), log=lambda _m: None)
    vault.close()
    try:
        with portal_for(tmp_path, tokens) as portal, live_server(portal.app) as url:
            portal.app.state.enroll_url = enrollment.url  # what the page's agent command names
            site = Site(url, tokens)
            page = open_setup(browser, site)
            page.select_option("#source-kind", "physical")
            page.fill("#source-form input[name=name]", "srv1")
            page.click("#source-form summary")
            page.fill("#source-form input[name=expires]", "30m")
            page.click("#add-source")
            page.wait_for_selector("#invitation:not([hidden])")
            assert page.inner_text("#inv-expires") == "30 min"
            assert page.get_attribute("#agent-status", "data-state") == "waiting"
            command = page.inner_text("#agent-command")
            shots.take(page, "passphrase")

            argv = shlex.split(command)
            assert argv[:2] == ["rehost-agent", "register"] and f"--server {enrollment.url}" in command
            agent = [sys.executable, "-m", "rehost.agent", "--state", str(tmp_path / "agent"), "register"]
            local = ["--disk", str(disk), "--listen", "127.0.0.1", "--port", str(free_port())]
            subprocess.run([*agent, *argv[2:-2], *local], check=True, cwd=REPO, capture_output=True,
                           timeout=60)
            page.wait_for_selector("#agent-status[data-state=registered]", timeout=15_000)
            assert "1 disk(s)" in page.inner_text("#agent-status")
            shots.take(page, "agent-registered")
    finally:
        enrollment.stop()


@pytest.mark.slow
def test_from_an_empty_vault_to_a_test_failover(browser: Any, tmp_path: Path, tiny_image: Path,
                                                need_qemu: None, shots: Shots) -> None:
    """Only through the dashboard: an image source, the local target (verified), a policy,
    replication with a network map, the first point, a test failover and its cleanup."""
    set_marker(tiny_image, "setup")
    try:
        with empty_site(tmp_path, tiny_image.parent) as site:
            page = open_setup(browser, site)
            shots.take(page, "goal")
            page.fill("#source-form input[name=name]", "web")
            page.fill("#source-form textarea[name=paths]", str(tiny_image))
            page.click("#add-source")
            page.wait_for_selector("#source-done:not([hidden])")
            assert "Added web (image): 1 disk(s)" in page.inner_text("#source-result")
            shots.take(page, "source")

            page.fill("#target-form input[name=name]", "here")
            page.fill("#target-form input[name=path]", str(tmp_path / "vault" / "targets" / "here"))
            page.click("#add-target")
            page.wait_for_selector("#verify-badge.healthy", timeout=30_000)
            assert page.locator("#verify-checks li.check.fail").count() == 0
            assert page.locator("#verify-checks li.check.ok").count() >= 2
            shots.take(page, "target-verified")

            page.fill("#policy-form input[name=name]", "standard")
            page.fill("#policy-form input[name=rpo_threshold]", "15m")
            page.fill("#policy-form input[name=retention]", "2h")
            page.fill("#policy-form textarea[name=bandwidth_schedule]", "mon-fri 08:00-18:00=10MB/s")
            page.click("#create-policy")
            page.wait_for_selector("#policy-result:not([hidden])")
            shots.take(page, "policy")

            page.click("#go-enable")
            page.wait_for_url(f"{site.url}/ui/enable")
            page.check("#pick-web")
            page.select_option("#enable-policy", "standard")
            page.select_option("#enable-target", "here")
            page.select_option("select[data-source-net=default]", "production")
            shots.take(page, "enable")
            page.click("#enable-start")
            page.wait_for_url(f"{site.url}/ui/items")
            shots.take(page, "items-enabling")

            page.goto(f"{site.url}/ui/items/web")
            deadline = time.monotonic() + 120
            while page.locator("#points tbody tr code").count() == 0:  # the first replication, a job
                # (not "tbody tr": with no point yet the table holds one row that says so)
                assert time.monotonic() < deadline, page.inner_text("main")
                page.wait_for_timeout(500)
                page.reload()
            shots.take(page, "first-point")

            page.click("#open-test-failover")
            page.check("#fixup-serial-console")  # one fix-up on the copy: its step is in the job
            page.click("#failover-start")
            page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
            assert wait_job(page, 300) == "succeeded", page.inner_text("#steps")
            assert "REHOST-BOOT-OK marker=setup" in page.inner_text("[data-step=verify_boot] .detail")
            fixed = page.inner_text("[data-step=fix_up] .detail")
            assert "serial-console: the command line has a ttyS0 console" in fixed, fixed
            shots.take(page, "test-failover")
            page.goto(f"{site.url}/ui/items/web")
            clean_up_test(page, site, shots)
    finally:
        kill_leftovers(str(tmp_path))
