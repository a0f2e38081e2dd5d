"""Passwords of the hosts a source logs in to (vCenter/ESXi, Hyper-V): never stored, never logged.

They come from an environment variable or, in an interactive command, from a prompt. A
long-running process (``rehost serve``, ``rehost worker``) calls ``no_prompts`` first: there a
prompt would make an API request or a scheduled cycle wait on a terminal nobody watches, so
a missing variable is an error that names it.
"""

from __future__ import annotations

import getpass
import os
import sys

from rehost.errors import UsageError

_prompts_allowed = True


def no_prompts() -> None:
    """From now on this process never asks for a password on its terminal."""
    global _prompts_allowed
    _prompts_allowed = False


def password(env: str, user: str, host: str) -> str:
    """The password of ``user`` on ``host``: ``$env``, else a prompt when one is allowed."""
    value = os.environ.get(env)
    if value:
        return value
    if _prompts_allowed and sys.stdin.isatty():
        return getpass.getpass(f"password of {user} on {host}: ")
    where = "in this command's environment" if _prompts_allowed else \
        "in the environment of rehost serve / rehost worker (they never prompt)"
    raise UsageError(f"set {env} to the password of {user} on {host} {where}")
