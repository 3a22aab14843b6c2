"""Atomic writes: a file appears whole under its final name or not at all, so an interrupted job never
leaves a truncated output that a re-run would trust."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; give the mode a plain open() would
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A fresh temporary folder in ``parent`` with the mode a plain ``mkdir`` gives (``mkdtemp`` makes 0700,
    which a folder renamed into place would keep)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file path that is a folder or whose folder cannot be created."""
    from .errors import StampInputError

    path = Path(path)
    if path.is_dir():
        raise StampInputError("the output is a folder; a file name is expected", path,
                              hint=f"give a file path, e.g. {path / 'embeddings.h5ad'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StampInputError(f"{parent} is a file, so the output's folder cannot be created", path,
                              hint="give an output path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StampInputError(f"no permission to write in {parent}", path, hint="choose a folder you can write")
    return path


def read_json(path: str | Path, what: str = "JSON file", hint: str | None = None):
    """The parsed JSON of a file the user gave; text that is not JSON (damaged, binary, nested deeper than the
    parser goes) is a StampInputError naming the file. File-system errors stay OSError (the CLI names them)."""
    from .errors import StampInputError

    path = Path(path)
    if path.is_dir():
        raise StampInputError(f"the {what} is a folder, not a file", path, hint=hint or "give the file's path")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as err:
        raise StampInputError(f"the {what} is not valid JSON ({err})", path,
                              hint=hint or "fix or replace the file") from err
    except RecursionError as err:
        raise StampInputError(f"the {what} is nested too deeply to be read", path,
                              hint=hint or "fix or replace the file (it is damaged or generated)") from err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default) + "\n")


def json_default(o):
    """``json.dump``'s ``default``: numpy scalars and arrays, paths (what our records hold beside plain JSON)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class PlainDataUnpickler:
    """Reads a pickle of plain data only: dicts, lists, tuples, strings, numbers, None, booleans. The pickle
    may name no class or function (``find_class`` refuses every global), so reading it never runs code."""

    @staticmethod
    def load(path: str | Path):
        import pickle

        class _Refuse(pickle.Unpickler):
            def find_class(self, module, name):  # noqa: D401 - pickle's hook
                raise pickle.UnpicklingError(f"the pickle names {module}.{name}; only plain data is accepted")

        from .errors import StampInputError

        try:
            with open(path, "rb") as fh:
                return _Refuse(fh).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError) as err:
            raise StampInputError(f"not a pickle of plain data ({err})", path,
                                  hint="only dicts, lists and strings are read from a pickle") from err
