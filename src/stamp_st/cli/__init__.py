"""``stamp-st`` command line. Each command lives in its own module under ``stamp_st.cli`` with a
``register(subparsers)`` function; modules import heavy libraries only inside their run function, so
``stamp-st --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..errors import StampInputError

# command module names, in the order shown by --help (data flows one way through them)
COMMAND_MODULES = [
    "inspect_cmd", "tokenize_cmd", "build_corpus_cmd", "pretrain_genes_cmd", "align_cmd",
    "convert_released_cmd", "embed_cmd", "evaluate_cmd", "hest_benchmark_cmd", "demo_cmd", "reproduce_cmd",
    "doctor_cmd", "download_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="stamp-st",
        description="STAMP: pathology image representations supervised by spatial transcriptomics. "
        "Data flows: inspect/tokenize -> build-corpus -> pretrain-genes -> align -> embed -> evaluate; "
        "stamp-st demo runs all of it on real HER2+ data.",
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
        before = set(sub.choices)
        mod.register(sub)
        for cmd in set(sub.choices) - before:
            _finish_help(sub.choices[cmd], mod.__doc__ or "", getattr(mod, "EXAMPLES", None))
    return parser


class HelpFormatter(argparse.HelpFormatter):
    """Wrapped prose, but indented paragraphs (the Examples) kept as written; an option's default shown once,
    only where its help does not already say it and there is one to show."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if len(lines) > 1 and all(line.startswith("  ") for line in lines[1:]):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(para, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text.lower() or action.default in (None, False, True, [])
                or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def plain(text: str) -> str:
    """Docstring markup -> plain help text: no reST ``literals`` or `backticks`, no "stamp-st CMD:" prefix."""
    text = _unquote(re.sub(r"^``stamp-st [^`]*``:\s*", "", text.strip()))
    return text[:1].upper() + text[1:]


def _finish_help(parser: argparse.ArgumentParser, doc: str, examples: str | None) -> None:
    """Every command: its module docstring's whole first paragraph as description (never cut mid-sentence),
    plain text throughout, and an Examples section where the module gives one."""
    first = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    lines = doc.strip().splitlines()
    desc = parser.description
    if desc is None or (lines and desc == lines[0]):
        desc = first
    elif desc == doc:  # the whole docstring (download): keep its paragraphs
        desc = "\n\n".join(" ".join(ln.strip() for ln in p.splitlines()) for p in doc.strip().split("\n\n"))
    parser.description = plain(desc)
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = _unquote(action.help)
    if examples:
        parser.epilog = "Examples:\n" + "\n".join("  " + ln.strip() for ln in examples.strip().splitlines())
    parser.formatter_class = HelpFormatter


def _unquote(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"\1", re.sub(r"``([^`]*)``", r"\1", text))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as err:  # a bad option, already printed: exit 2 like every input error (--help still exits)
        if err.code == 2:
            return 2
        raise
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import os

    from ..readers.pixel_size import ALLOW_COARSE_IMAGE_ENV, CONFIRM_UM_PER_PX_ENV

    scoped = {k: os.environ.get(k) for k in (CONFIRM_UM_PER_PX_ENV, ALLOW_COARSE_IMAGE_ENV)}  # set per command
    try:
        rc = args.func(args)
    except StampInputError as err:
        print(f"stamp-st {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no: a path, not a bug, so no traceback
        print(f"stamp-st {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        message = describe_memory_error(err)
        if message is None:
            raise  # a genuine internal error keeps its traceback
        print(f"stamp-st {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume where supported", file=sys.stderr)
        return 130
    finally:
        for k, v in scoped.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return int(rc or 0)


def describe_memory_error(err: BaseException) -> str | None:
    """An allocation that failed (numpy's MemoryError, torch's OutOfMemoryError or CPU allocator RuntimeError)
    as a message saying what to shrink; None for any other RuntimeError."""
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    if isinstance(err, RuntimeError) and type(err).__name__ != "OutOfMemoryError" and not any(
            s in str(err) for s in ("can't allocate memory", "out of memory", "not enough memory")):
        return None
    return (f"out of memory ({text})\nWhat to do: the sizes asked for do not fit this machine: use a smaller "
            "model (--model / d_model, n_layers), --context, --batch-size or image size, or a machine with more "
            "memory")


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
