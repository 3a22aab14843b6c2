"""CLI conventions: `python -m stamp_st`, whole-sentence --help, --json on every command that prints a summary,
a quick and quiet doctor whose package lists agree with pyproject.toml."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_SUMMARY = {"demo"}  # demo's summary is its report.html


def _parsers():
    from stamp_st.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_python_dash_m_and_a_quiet_doctor():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-m", "stamp_st", "doctor", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-2000:]  # 1 = a required package missing, still a report
    report = json.loads(r.stdout)
    assert report["required"]["numpy"] and "FutureWarning" not in r.stderr


def test_help_descriptions_are_whole_sentences():
    for name, p in _parsers().items():
        text = (p.description or "").strip()
        if text:
            assert re.search(r"[.)]$", text), f"{name}: description stops mid-sentence: {text[-60:]!r}"


def test_every_command_with_a_summary_has_json():
    for name, p in _parsers().items():
        if name in NO_SUMMARY:
            continue
        flags = {s for a in p._actions for s in a.option_strings}
        assert "--json" in flags, f"{name} has no --json"


def test_doctor_and_pyproject_agree_on_dependencies():
    tomllib = pytest.importorskip("tomllib")
    from stamp_st.cli.doctor_cmd import OPTIONAL, REQUIRED

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):  # "dask[distributed]>=2024.1" -> dask, distributed (the extra installs that package)
        out = set()
        for r in reqs:
            out.add(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-"))
            out |= {e.strip().lower() for e in re.findall(r"\[([^\]]*)\]", r)[:1] for e in e.split(",")}
        return out

    def norm(keys):
        return {k.lower().replace("_", "-") for k in keys}

    assert names(meta["dependencies"]) == norm(REQUIRED)
    extras = set().union(*(names(v) for k, v in meta["optional-dependencies"].items() if k not in ("dev", "all")))
    assert extras == norm(OPTIONAL)
