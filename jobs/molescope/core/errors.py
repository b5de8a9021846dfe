"""The project's own exceptions: problems a user can fix (an input, a setting, the storage), whose message
names the input and the problem. `molescope <command>` prints them as one line (the traceback only with
`--debug` or in `--log-file`); anything else is a bug or an outage and keeps its traceback.

Standard library only: the light modules (registry, settings) and the DAG side may raise them.
"""

from __future__ import annotations


class MolescopeError(Exception):
    """Base of the project's own exceptions."""


class InputError(MolescopeError, ValueError):
    """An input (batch folder, CSV, table, model, setting) that cannot be used as given."""


class StorageError(MolescopeError, OSError):
    """The storage refused a read or write (disk full, permission denied, unreachable); names the URI."""


class InvariantError(MolescopeError, RuntimeError):
    """A count that must hold did not (rows in != out + quarantined, rows written != rows planned)."""
