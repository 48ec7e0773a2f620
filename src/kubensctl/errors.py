"""Typed errors. Each carries a one-line message, a hint naming the fix, and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_ENCAPSULATED = 3
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class KubensError(Exception):
    """An error the user can act on. ``str()`` is the message; ``hint`` names the fix."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        """The one-line form printed by ``main()``: problem, then fix."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(KubensError):
    exit_code = EXIT_USAGE


class PermissionDenied(KubensError):
    pass


class NamespaceError(KubensError):
    pass


class BusyError(KubensError):
    """Refused because processes still use the namespace."""


class UnitError(KubensError):
    pass


class ClusterError(KubensError):
    pass
