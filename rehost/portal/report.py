"""The printable migration report for the CLI (``rehost report --format html``, the demo): the
same page the dashboard serves, reached through the portal as the layers want."""

from __future__ import annotations

from rehost.web.report import render

__all__ = ["render"]
