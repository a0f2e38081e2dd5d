"""The fine print of the ``Storage`` contract that ``base.py`` leaves open, shared by backends.

Every backend calls these helpers so that all of them agree on the corner cases; the
conformance suite (``tests/repository/storage/test_conformance.py``) holds them to it.

**Names.** ``[0-9a-z._-]``, 1 to 255 characters, no leading dot (a leading dot marks temp
files and hides ``.``/``..``), never ``/``. ``Kind.CONFIG`` holds exactly one object, named
``config``. Names come from the repository, not from users, so a bad name is a bug upstream;
we still refuse it with ``UsageError`` instead of letting it escape the repository folder.

**Ranges.** ``load(kind, name, offset, length)`` returns exactly ``length`` bytes starting at
``offset`` (``length=None``: up to the end). A range that does not lie inside the object raises
``IntegrityError``, it never returns a short read: the repository reads a blob out of a pack at
an (offset, length) taken from the index, so a range past the end means the index and the pack
disagree, which is damage to report, not data to return. ``offset == size`` is inside (it
reads ``b""``). A negative offset or length is a caller bug: ``UsageError``.
"""

from __future__ import annotations

import re

from rehost.errors import IntegrityError, UsageError
from rehost.repository.storage.base import Kind

#: Longest name: the usual file-name limit of local file systems.
MAX_NAME_LENGTH = 255
#: Prefix of the temp files an atomic save writes; never a valid object name.
TEMP_PREFIX = ".tmp-"
CONFIG_NAME = "config"

_NAME = re.compile(r"[0-9a-z_-][0-9a-z._-]*")


def describe(kind: Kind, name: str) -> str:
    """The object as messages show it: ``data/ab12...``."""
    return f"{kind.value}/{name}"


def is_valid_name(name: object) -> bool:
    """True for a name any backend can store as a plain file name (see the module doc)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _NAME.fullmatch(name) is not None
    )


def check_name(kind: Kind, name: str) -> None:
    """Refuse names that could escape the kind's folder or clash with temp files."""
    if not is_valid_name(name):
        raise UsageError(
            f"invalid object name {name!r} for {kind.value}: use 1-{MAX_NAME_LENGTH} characters "
            "of [0-9a-z._-], not starting with a dot"
        )
    if kind is Kind.CONFIG and name != CONFIG_NAME:
        raise UsageError(f"the config object must be named {CONFIG_NAME!r}, not {name!r}")


def check_range(offset: int, length: int | None) -> None:
    """Refuse negative offsets and lengths before touching the backend."""
    if offset < 0 or (length is not None and length < 0):
        raise UsageError(f"invalid range: offset={offset}, length={length}")


def range_bounds(
    size: int, offset: int, length: int | None, *, kind: Kind, name: str
) -> tuple[int, int]:
    """Return ``(start, end)`` of the requested range within an object of ``size`` bytes.

    Raises ``IntegrityError`` when the range does not lie inside the object (see module doc).
    """
    check_range(offset, length)
    end = size if length is None else offset + length
    if offset > size or end > size:
        raise IntegrityError(
            f"{describe(kind, name)} has {size} bytes, cannot read offset={offset} "
            f"length={length}: the reference points past the end of the object"
        )
    return offset, end
