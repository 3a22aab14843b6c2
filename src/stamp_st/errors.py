"""One exception type for bad user input: the message always names the file and what to do."""

from __future__ import annotations

from pathlib import Path


class StampInputError(ValueError):
    """Bad or missing user input. ``str(err)`` is meant to be shown to the user as is."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else Path(path)
        self.hint = hint
        parts = [message if path is None else f"{path}: {message}"]
        if hint:
            parts.append(f"What to do: {hint}")
        super().__init__("\n".join(parts))


class DataNotFoundError(StampInputError, FileNotFoundError):
    """A required input file or the data directory is absent."""
