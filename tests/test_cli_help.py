"""Every command's --help is plain text (no reST ``literals`` or `backticks`), has a description, says each
default at most once, and the main commands end in an Examples section whose lines run through the parser."""

from __future__ import annotations

import re
import shlex

import pytest

MAIN = {"inspect", "tokenize", "build-corpus", "pretrain-genes", "align", "embed", "evaluate", "demo", "doctor",
        "download", "convert-released", "hest-benchmark", "reproduce"}


def _commands():
    from stamp_st.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return parser, sub.choices


def test_top_level_help_is_plain():
    parser, _ = _commands()
    assert "`" not in parser.format_help()


@pytest.mark.parametrize("name", sorted(MAIN))
def test_command_help(name):
    _, commands = _commands()
    assert name in commands, f"{name} is not registered"
    p = commands[name]
    text = p.format_help()
    assert "`" not in text, f"{name}: markup in help: {text[text.index('`') - 40:text.index('`') + 40]!r}"
    assert (p.description or "").strip(), f"{name} has no description"
    flat = " ".join(text.split())
    assert not re.search(r"\(default[^()]*(\([^()]*\)[^()]*)*\)\s*\(default", flat), f"{name}: default said twice"
    assert "\nExamples:\n" in text, f"{name} has no Examples section"
    examples = text.split("\nExamples:\n", 1)[1].strip().splitlines()
    assert examples and all(line.startswith("  ") for line in text.split("\nExamples:\n", 1)[1].splitlines()
                            if line.strip())


def test_every_command_is_covered_and_examples_parse():
    """Each example line that runs stamp-st parses with the real parser (flags and choices exist)."""
    parser, commands = _commands()
    assert set(commands) == MAIN
    for p in commands.values():
        for line in p.format_help().split("\nExamples:\n", 1)[1].strip().splitlines():
            argv = shlex.split(line)
            if argv[:1] == ["torchrun"]:
                argv = argv[argv.index("stamp_st.cli") + 1:]
            elif argv[:1] == ["stamp-st"]:
                argv = argv[1:]
            args = parser.parse_args(argv)
            assert args.command == argv[0], line
