"""The typed sample record: built and validated once by the readers, stored as uns["stamp_st"] with the keys
files have always carried, read back typed; the pixel size rule lives in one function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stamp_st
from stamp_st.errors import StampInputError
from stamp_st.readers import SampleMeta, read_sample
from stamp_st.readers.pixel_size import resolve_um_per_px

UNS_KEYS = ["sample_id", "format", "source_path", "image_path", "image_size_px", "um_per_px", "um_per_px_source",
            "grid", "spot_pitch_um", "spot_diameter_um", "qc"]


def test_reader_record_roundtrips_through_uns(visium_dir):
    a = read_sample(visium_dir, um_per_px=0.5)
    meta = SampleMeta.of(a)
    assert list(a.uns["stamp_st"]) == UNS_KEYS
    assert (meta.technology, meta.slide_um_per_px, meta.slide_um_per_px_source) == ("spaceranger", 0.5, "user")
    assert meta.has_image == bool(a.uns["stamp_st"]["image_path"]) and meta.grid == a.uns["stamp_st"]["grid"]
    assert SampleMeta.from_uns(meta.to_uns()) == meta
    assert meta.to_uns() == a.uns["stamp_st"]


def test_hand_built_uns_takes_defaults():
    m = SampleMeta.from_uns({"sample_id": "toy", "image_path": "he.jpg", "um_per_px": 0.5})
    assert (m.slide_um_per_px, m.slide_um_per_px_source, m.grid, m.qc) == (0.5, "metadata", "hex", {})
    assert SampleMeta.from_uns({"um_per_px": 0.0}).slide_um_per_px is None  # embedding files write 0 for unknown
    assert SampleMeta.from_uns(None) == SampleMeta()


@pytest.mark.parametrize("bad", [
    {"grid": "triangle"},
    {"slide_um_per_px": -1.0, "slide_um_per_px_source": "user"},
    {"slide_um_per_px": 0.5, "slide_um_per_px_source": "none"},
    {"slide_um_per_px_source": "spot_pitch"},
    {"image_size_px": (1, 2, 3)},
    {"spot_pitch_um": "wide"},
])
def test_invalid_record_is_refused(bad):
    with pytest.raises(StampInputError):
        SampleMeta(source_path="x.h5ad", **bad)


def test_pixel_size_order_of_trust():
    with pytest.warns(UserWarning, match="differ by"):  # the estimates disagree: said, and the rule still holds
        assert resolve_um_per_px(user=0.3, metadata=0.4, spot_pitch=0.5, spot_diameter=0.6, slide=0.7,
                                 confirmed=True) == (0.3, "user")
        assert resolve_um_per_px(metadata=0.4, spot_pitch=0.5, slide=0.7) == (0.4, "metadata")
    assert resolve_um_per_px(spot_diameter=0.6, slide=0.7) == (0.6, "spot_diameter")
    assert resolve_um_per_px(slide=0.7) == (0.7, "slide")
    assert resolve_um_per_px(slide=float("nan")) == (None, "none")


def test_only_readers_read_the_sample_dict():
    """Outside readers/, code reads the record (SampleMeta.of), never uns["stamp_st"] by its string key.
    embedding_file.py reads the embedding record that files written before uns["stamp_st_embedding"] kept there."""
    root = Path(stamp_st.__file__).parent
    allowed = {root / "embedding_file.py"}
    found = []
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "readers") or path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            key = None
            if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("uns"):
                key = node.slice
            elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("uns.get") and node.args):
                key = node.args[0]
            if key is not None and ((isinstance(key, ast.Constant) and key.value == "stamp_st")
                                    or (isinstance(key, ast.Name) and key.id == "UNS_STAMP")):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
