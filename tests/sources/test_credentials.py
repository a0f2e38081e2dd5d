"""Where a source's host password comes from, and where it is never asked for."""

from __future__ import annotations

import getpass
import sys
from types import SimpleNamespace

import pytest

from rehost.errors import UsageError
from rehost.sources import credentials

ENV = "REHOST_TEST_PASSWORD"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """stdin is a terminal; the prompts that would be shown are recorded (and answered)."""
    asked: list[str] = []
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr(getpass, "getpass", lambda prompt: asked.append(prompt) or "typed")
    monkeypatch.setattr(credentials, "_prompts_allowed", True)
    return asked


def test_the_environment_comes_first(terminal: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-env")
    assert credentials.password(ENV, "u", "hv01") == "from-env"
    assert terminal == []


def test_an_interactive_command_asks(terminal: list[str]) -> None:
    assert credentials.password(ENV, "u", "hv01") == "typed"
    assert terminal == ["password of u on hv01: "]


def test_no_terminal_is_refused_naming_the_variable(terminal: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: False))
    with pytest.raises(UsageError, match=f"set {ENV} to the password of u on hv01 in this command"):
        credentials.password(ENV, "u", "hv01")
    assert terminal == []


def test_a_server_never_prompts_even_on_a_terminal(terminal: list[str]) -> None:
    """``rehost serve`` started in a terminal: an API request must not wait on that terminal."""
    credentials.no_prompts()
    with pytest.raises(UsageError, match="environment of rehost serve / rehost worker"):
        credentials.password(ENV, "u", "hv01")
    assert terminal == []


def test_both_host_kinds_use_it(terminal: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from rehost.sources import hyperv, vsphere_api

    monkeypatch.setenv(hyperv.PASSWORD_ENV, "hv-secret")
    monkeypatch.setenv(vsphere_api.PASSWORD_ENV, "vc-secret")
    assert vsphere_api.password("u", "vc") == "vc-secret"
    credentials.no_prompts()
    monkeypatch.delenv(vsphere_api.PASSWORD_ENV)
    with pytest.raises(UsageError, match="REHOST_VSPHERE_PASSWORD"):
        vsphere_api.password("u", "vc")
