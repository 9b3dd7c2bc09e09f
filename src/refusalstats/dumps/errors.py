"""The errors of the dump loaders: one family, both :class:`ValueError` subclasses."""

from __future__ import annotations

from ..table import SchemaError


class DumpError(ValueError):
    """A published dump cannot be read: unknown layout, malformed file, bad mapping.

    The message names the file (and row or column) at fault and how to fix it.
    """


class DumpNotFound(DumpError, FileNotFoundError):
    """A file of a dump does not exist (locally, or HTTP 404 for a URL)."""


class ChecksumError(DumpError):
    """A file's SHA-256 differs from the one it was pinned to (changed or corrupted)."""


def _schema_error(exc: SchemaError, label: str) -> DumpError:
    """A :class:`DumpError` listing every schema problem of an imported table."""
    return DumpError(f"{label}: the imported table does not follow the schema:\n"
                     + "\n".join(f"  - {p}" for p in exc.problems))
