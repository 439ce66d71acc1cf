"""Differences between two recorded configs: the names and values a resume refusal shows."""

from causal_grpo.options import MISSING, differences


def test_differences_name_each_setting_by_its_path():
    old = {"seeds": 3, "grpo": {"group_size": 4, "clip": 0.2}, "empty": {}}
    new = {"seeds": 3, "grpo": {"group_size": 8, "clip": 0.2}, "numerics": {"x64": False}}
    assert differences(old, new) == [("empty", {}, MISSING),
                                     ("grpo.group_size", 4, 8),
                                     ("numerics.x64", MISSING, False)]
    assert differences(new, new) == []
    # A damaged record (not an object) differs as a whole; a key may hold dots (file names).
    assert differences(None, {"a": 1}) == [("", None, {"a": 1})]
    assert differences({"s": {"my.json": 1}}, {"s": {"my.json": 2}}) == [("s.my.json", 1, 2)]
