"""Errors the CLI maps to exit codes."""
from __future__ import annotations


class UsageError(Exception):
    """Bad user input (grid, flags, paths): exit code 2, nothing written."""

    exit_code = 2


class GridError(UsageError):
    """A grid problem, located by file and key path."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}")


class AssetError(UsageError):
    """A missing or corrupt asset (checkpoint, data set)."""


class ItemError(RuntimeError):
    """An input item of a data set that does not decode, where the job says stop: exit 1 (a
    fault in the data, found while running), naming the item."""
