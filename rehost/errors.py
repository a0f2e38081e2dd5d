"""One error hierarchy for the whole project.

Every error a user can meet is a ``RehostError`` subclass with a message template and an
exit code; the CLI and API edges catch ``RehostError`` in one place and print one line.
Integrity and internal errors keep their traceback because they signal a bug or damage,
not a mistake of the user.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RehostError(Exception):
    """Base of every error rehost raises on purpose."""

    template: ClassVar[str] = "{message}"
    exit_code: ClassVar[int] = 1
    #: True when the user can fix it (bad input, wrong state): print one line, no traceback.
    user_error: ClassVar[bool] = True

    def __init__(self, message: str = "", **fields: Any) -> None:
        self.fields = dict(fields, message=message)
        super().__init__(self.template.format(**self.fields))


class UsageError(RehostError):
    """The command was given something it cannot use (a bad value, a missing file)."""

    exit_code = 2


class NotFound(RehostError):
    """A named thing (machine, point, disk, object) does not exist."""

    exit_code = 3


class AlreadyExists(RehostError):
    exit_code = 4


class InvalidState(RehostError):
    """The operation is not allowed in the current state; the message says what to do."""

    exit_code = 5


class WrongPassword(RehostError):
    template = "wrong password for the vault's repository key{message}"
    exit_code = 6


class IntegrityError(RehostError):
    """Stored data is damaged or missing: never return wrong data, fail loudly instead."""

    exit_code = 10
    user_error = False


class BackendError(RehostError):
    """A storage backend failed. ``retryable`` says whether trying again can help."""

    exit_code = 11
    user_error = False

    def __init__(self, message: str = "", *, retryable: bool = False, **fields: Any) -> None:
        self.retryable = retryable
        super().__init__(message, **fields)


class ObjectNotFound(BackendError, NotFound):
    exit_code = 3


class DiskError(RehostError):
    """A disk could not be opened or read (qemu-nbd, NBD or the image itself)."""

    exit_code = 12
