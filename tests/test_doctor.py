import json

from stamp_st.cli import main


def test_doctor_json_reports_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STAMP_ST_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "uni").mkdir()
    (tmp_path / "uni" / "pytorch_model.bin").write_bytes(b"x")
    rc = main(["doctor", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["required"]["torch"]
    assert out["weights"]["uni"]["found"] is True
    assert out["weights"]["conch"]["found"] is False
    assert "cuda" in out["gpu"]


def test_data_env_pointing_nowhere_is_a_clear_error(monkeypatch, tmp_path):
    import pytest

    from stamp_st.errors import DataNotFoundError
    from stamp_st.paths import data_dir

    monkeypatch.setenv("STAMP_ST_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="STAMP_ST_DATA"):
        data_dir()
    assert data_dir(required=False) is None
