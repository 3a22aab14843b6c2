"""``stamp-st`` command line. Each command lives in its own module under ``stamp_st.cli`` with a
``register(subparsers)`` function; modules import heavy libraries only inside their run function, so
``stamp-st --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import StampInputError

# command module names, in the order shown by --help (data flows one way through them)
COMMAND_MODULES = [
    "inspect_cmd", "tokenize_cmd", "build_corpus_cmd", "pretrain_genes_cmd", "align_cmd",
    "convert_released_cmd", "embed_cmd", "evaluate_cmd", "demo_cmd", "reproduce_cmd", "doctor_cmd", "download_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="stamp-st",
        description="STAMP: pathology image representations supervised by spatial transcriptomics. "
        "Data flows: inspect/tokenize -> build-corpus -> pretrain-genes -> align -> embed -> evaluate; "
        "`stamp-st demo` runs all of it on real HER2+ data.",
    )
    parser.add_argument("--version", action="version", version=f"stamp-st {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name and err.name.endswith(name):
                continue  # command not built yet
            raise
        mod.register(sub)
        _whole_description(sub, mod.__doc__ or "")
    return parser


def _whole_description(sub, doc: str) -> None:
    """A command whose description is the first line of its module docstring gets the whole first paragraph,
    so that ``--help`` never stops mid-sentence."""
    lines = doc.strip().splitlines()
    if not lines:
        return
    paragraph = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    for parser in sub.choices.values():
        if parser.description == lines[0]:
            parser.description = paragraph


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except StampInputError as err:
        print(f"stamp-st {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no: a path, not a bug, so no traceback
        print(f"stamp-st {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume where supported", file=sys.stderr)
        return 130
    return int(rc or 0)


def describe_os_error(err: OSError) -> str:
    """A file-system error as one message naming the path and what to do."""
    import errno

    path = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        path = f"{path} -> {err.filename2}"
    what = err.strerror or str(err)
    if isinstance(err, PermissionError):
        hint = "check the permissions, or choose a path you can read/write"
    elif isinstance(err, IsADirectoryError):
        hint = "this is a folder: give a file path"
    elif isinstance(err, NotADirectoryError):
        hint = "a part of this path is a file: give a folder path"
    elif isinstance(err, FileNotFoundError):
        hint = "check the path (its folder must exist)"
    elif isinstance(err, FileExistsError):
        hint = "remove it or choose another name"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free disk space or write elsewhere"
    else:
        hint = "check the path and the disk"
    return f"{path + ': ' if path else ''}{what}\nWhat to do: {hint}"


if __name__ == "__main__":
    sys.exit(main())
