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


def not_a_file(path: str | Path) -> str:
    """What a path that should be a regular file is instead ("not found", "a folder", "a device ..."), for
    messages that must not call /dev/zero or a folder "not found"."""
    import os
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found" if path.parent.is_dir() or str(path.parent) in ("", ".") else \
            f"not found (its folder {path.parent} does not exist)"
    except NotADirectoryError:
        return "not found (a part of the path is a file, not a folder)"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "a pipe or socket, not a regular file"
    return "a regular file"


def require_file(path: str | Path, what: str, hint: str | None = None) -> Path:
    """``path`` when it is a regular file; else DataNotFoundError (absent) or StampInputError saying what it is."""
    path = Path(path)
    if path.is_file():
        return path
    problem = not_a_file(path)
    cls = DataNotFoundError if problem.startswith("not found") else StampInputError
    raise cls(f"{what}: {problem}", path, hint=hint or f"give the path of the {what} file")
