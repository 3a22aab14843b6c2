import numpy as np
import pandas as pd
import pytest

from stamp_st.errors import StampInputError
from stamp_st.readers import SampleMeta, detect_format, read_sample


def _folder(tmp_path, shift_ids=False):
    ids = [f"s{r}_{c}" for r in range(4) for c in range(r % 2, 8, 2)]
    rc = [(int(i[1]), int(i.split("_")[1])) for i in ids]
    pos = pd.DataFrame([(r, c, 100 + 50.0 * c, 100 + 86.6 * r) for r, c in rc],
                       columns=["array_row", "array_col", "x_px", "y_px"], index=ids)
    pos.to_csv(tmp_path / "positions.csv")
    counts = pd.DataFrame(np.arange(len(ids) * 3).reshape(-1, 3) % 5, columns=["ACTB", "GAPDH", "CD74"],
                          index=[i + "x" if shift_ids else i for i in ids])
    counts.to_csv(tmp_path / "counts.csv")
    return tmp_path


def test_csv_folder_is_detected_and_read(tmp_path):
    a = read_sample(_folder(tmp_path))
    assert detect_format(tmp_path) == "csv" and a.shape == (16, 3)
    meta = SampleMeta.of(a)
    assert meta.technology == "csv" and meta.slide_um_per_px == pytest.approx(1.0)


def test_csv_mismatched_ids_are_refused(tmp_path):
    with pytest.raises(StampInputError, match="do not match"):
        read_sample(_folder(tmp_path, shift_ids=True))
