import pytest

from stamp_st.cli.options import parse_set_overrides
from stamp_st.errors import StampInputError


def test_set_overrides_parse_json_and_keep_plain_strings():
    assert parse_set_overrides(["lr=3e-4", "strategy=fsdp", "val_at_start=true"]) == {
        "lr": 3e-4, "strategy": "fsdp", "val_at_start": True}
    with pytest.raises(StampInputError, match="KEY=VALUE"):
        parse_set_overrides(["lr"])
