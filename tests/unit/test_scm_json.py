"""Unit tests for custom-SCM JSON files (causal_grpo.scm_families.load_scm_json / scm_from_dict)."""

from __future__ import annotations

import copy
import json
import re
import warnings

import numpy as np
import pytest

from causal_grpo.scm import SCMError, SCMSpec
from causal_grpo.scm_families import easy, hard, load_scm_json, resolve_scm, scm_from_dict


def valid_obj():
    return {
        "name": "toy",
        "variables": ["A", "B", "C"],
        "target": "C",
        "edges": [["A", "B", 1.5], ["B", "C", -0.5], ["A", "C", 2]],
        "noise_std": {"A": 1.0, "B": 0.5, "C": 0.25},
        "intervention_range": [-1.0, 3.0],
    }


def write(tmp_path, obj_or_text, name="scm.json"):
    path = tmp_path / name
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_same_spec(a: SCMSpec, b: SCMSpec):
    assert a.name == b.name
    assert a.variables == b.variables
    assert a.target == b.target
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.noise_std, b.noise_std)
    assert a.intervention_range == b.intervention_range


# --------------------------------------------------------------------------- valid files

def test_valid_file_loads(tmp_path):
    spec = load_scm_json(write(tmp_path, valid_obj()))
    assert isinstance(spec, SCMSpec)
    assert spec.name == "toy"
    assert spec.variables == ("A", "B", "C")
    assert spec.target == 2
    expected = np.zeros((3, 3))
    expected[0, 1], expected[1, 2], expected[0, 2] = 1.5, -0.5, 2.0
    np.testing.assert_array_equal(spec.weights, expected)
    np.testing.assert_array_equal(spec.noise_std, [1.0, 0.5, 0.25])
    assert spec.intervention_range == (-1.0, 3.0)
    assert list(spec.target_parents) == [0, 1]


@pytest.mark.parametrize("factory", [easy, hard])
def test_to_dict_roundtrip(factory, tmp_path):
    spec = factory()
    assert_same_spec(scm_from_dict(spec.to_dict()), spec)
    # Through a file as well.
    assert_same_spec(load_scm_json(write(tmp_path, spec.to_dict())), spec)


def test_roundtrip_of_loaded_spec(tmp_path):
    spec = load_scm_json(write(tmp_path, valid_obj()))
    assert_same_spec(scm_from_dict(spec.to_dict()), spec)


def test_intervention_range_default(tmp_path):
    obj = valid_obj()
    del obj["intervention_range"]
    spec = load_scm_json(write(tmp_path, obj))
    assert spec.intervention_range == (-2.0, 2.0)


def test_noise_std_float(tmp_path):
    obj = valid_obj()
    obj["noise_std"] = 0.3
    spec = load_scm_json(write(tmp_path, obj))
    np.testing.assert_array_equal(spec.noise_std, [0.3, 0.3, 0.3])
    obj["noise_std"] = 2  # an int is a number too
    np.testing.assert_array_equal(scm_from_dict(obj).noise_std, [2.0, 2.0, 2.0])


def test_name_defaults_to_file_stem(tmp_path):
    obj = valid_obj()
    del obj["name"]
    assert load_scm_json(write(tmp_path, obj, "my scm.json")).name == "my_scm"
    assert scm_from_dict(obj).name == "custom"


def test_no_edges_is_valid():
    obj = valid_obj()
    obj["edges"] = []
    spec = scm_from_dict(obj)
    assert spec.adj.sum() == 0


def test_resolve_scm_accepts_json_path(tmp_path):
    path = write(tmp_path, valid_obj())
    assert_same_spec(resolve_scm(path), load_scm_json(path))


# --------------------------------------------------------------------------- invalid files

def mutate(fn):
    obj = valid_obj()
    fn(obj)
    return obj


def _set(key, value):
    return lambda o: o.__setitem__(key, value)


INVALID = [
    # (id, object or raw text, pattern)
    ("cycle", mutate(lambda o: o["edges"].append(["C", "A", 1.0])), "cycle"),
    ("unknown_edge_child", mutate(lambda o: o["edges"].append(["A", "Z", 1.0])), "unknown"),
    ("unknown_edge_parent", mutate(lambda o: o["edges"].append(["Q", "B", 1.0])), "unknown"),
    ("duplicate_variable", mutate(_set("variables", ["A", "B", "B"])), "duplicate"),
    ("duplicate_edge", mutate(lambda o: o["edges"].append(["A", "B", 0.7])), "duplicate"),
    ("target", mutate(_set("target", "Z")), "target"),
    ("nan_coef", None, "finite"),  # raw text with a literal NaN, built below
    ("inf_coef", None, "finite"),  # raw text with a literal Infinity
    ("string_coef", mutate(lambda o: o["edges"].__setitem__(0, ["A", "B", "1.5"])), "number"),
    ("bool_coef", mutate(lambda o: o["edges"].__setitem__(0, ["A", "B", True])), "number"),
    ("zero_coef", mutate(lambda o: o["edges"].__setitem__(0, ["A", "B", 0.0])), "coefficient 0"),
    ("self_loop", mutate(lambda o: o["edges"].append(["B", "B", 1.0])), "self-loop"),
    ("bad_edge_shape", mutate(lambda o: o["edges"].append(["A", "B"])), r"\[parent, child, coef\]"),
    ("no_edges_key", mutate(lambda o: o.pop("edges")), "missing"),
    ("no_variables_key", mutate(lambda o: o.pop("variables")), "missing"),
    ("no_target_key", mutate(lambda o: o.pop("target")), "missing"),
    ("no_noise_key", mutate(lambda o: o.pop("noise_std")), "missing"),
    ("noise_zero", mutate(_set("noise_std", 0.0)), "> 0"),
    ("noise_negative", mutate(_set("noise_std", -1.0)), "> 0"),
    ("noise_dict_negative", mutate(lambda o: o["noise_std"].__setitem__("B", -0.5)), "> 0"),
    ("noise_dict_missing", mutate(lambda o: o["noise_std"].pop("B")), "missing"),
    ("noise_dict_unknown", mutate(lambda o: o["noise_std"].__setitem__("Z", 1.0)), "unknown"),
    ("range_equal", mutate(_set("intervention_range", [1.0, 1.0])), "lo < hi"),
    ("range_reversed", mutate(_set("intervention_range", [2.0, -2.0])), "lo < hi"),
    ("range_shape", mutate(_set("intervention_range", [0.0])), r"\[lo, hi\]"),
    ("range_equal_in_float32", mutate(_set("intervention_range", [1.0, 1.0000000001])),
     "same ends in float32"),
    # Ends beyond float32 (or equal there only because they are huge) are out of its bound.
    ("range_beyond_float32", mutate(_set("intervention_range", [1e39, 2e39])),
     "above the float32-safe"),
    ("range_huge_and_close", mutate(_set("intervention_range", [1e20, 1e20 + 1e12])),
     "above the float32-safe"),
    # A parent held tiny keeps the bound along paths small (600 here); the coefficient itself
    # is above the float32-safe bound.
    ("coef_beyond_float32", mutate(lambda o: (o["edges"].__setitem__(0, ["A", "B", 1e20]),
                                              o["noise_std"].__setitem__("A", 1e-18),
                                              o.__setitem__("intervention_range", [0, 1e-30]))),
     r"coefficient 1e\+20 of edge A->B is above the float32-safe"),
    ("noise_below_float32", mutate(lambda o: o["noise_std"].__setitem__("A", 1e-20)),
     r"noise_std 1e-20 of A is below 1e-18"),
    ("unknown_key", mutate(_set("colour", "red")), "unknown key"),
    ("bad_name", mutate(_set("name", "has space")), "name"),
    ("one_variable", {"variables": ["A"], "target": "A", "edges": [], "noise_std": 1.0},
     "at least 2"),
    ("variables_not_list", mutate(_set("variables", "ABC")), "variables"),
    ("not_an_object", [1, 2, 3], "object"),
    ("bad_json", "{\"variables\": [\"A\", ", "not valid JSON"),
]


def _raw_text(case_id):
    text = json.dumps(valid_obj())
    literal = {"nan_coef": "NaN", "inf_coef": "Infinity"}[case_id]
    out = text.replace('["A", "B", 1.5]', f'["A", "B", {literal}]')
    assert literal in out
    return out


@pytest.mark.parametrize("case_id,obj,pattern", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_file_raises(tmp_path, case_id, obj, pattern):
    if obj is None:
        obj = _raw_text(case_id)
    # A neutral file name, so the path in the message cannot satisfy the pattern by itself.
    path = write(tmp_path, obj, "scm.json")
    with pytest.raises(SCMError, match=pattern) as ei, warnings.catch_warnings():
        warnings.simplefilter("error")     # a warning would print more than the one line
        load_scm_json(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert path in msg  # names the file
    # The pattern must match in the part of the message that is not the path
    # (pytest's tmp_path contains the test id).
    assert re.search(pattern, msg.replace(path, "")), msg


def test_nan_literal_really_parses_to_nan(tmp_path):
    # Guard for the test above: Python's json accepts the literal and yields a float NaN.
    obj = json.loads(_raw_text("nan_coef"))
    assert np.isnan(obj["edges"][0][2])
    with pytest.raises(SCMError, match="finite"):
        scm_from_dict(obj)


@pytest.mark.parametrize("case_id,obj,pattern",
                         [c for c in INVALID if c[1] is not None and not isinstance(c[1], str)],
                         ids=[c[0] for c in INVALID if c[1] is not None and not isinstance(c[1], str)])
def test_invalid_dict_raises(case_id, obj, pattern):
    with pytest.raises(SCMError, match=pattern) as ei:
        scm_from_dict(copy.deepcopy(obj))
    assert "\n" not in str(ei.value)


def test_file_not_found(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(SCMError, match="not found") as ei:
        load_scm_json(path)
    assert "\n" not in str(ei.value)
    # resolve_scm treats a *.json name as a path.
    with pytest.raises(SCMError, match="not found"):
        resolve_scm(path)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(SCMError, match="cannot read") as ei:
        load_scm_json(str(tmp_path))
    assert "\n" not in str(ei.value)


def test_invalid_utf8(tmp_path):
    path = tmp_path / "scm.json"
    path.write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(SCMError) as ei:
        load_scm_json(str(path))
    assert "\n" not in str(ei.value)


def test_multiline_bad_json_message_is_one_line(tmp_path):
    text = '{\n  "name": "x",\n  "variables": ["A", "B"]\n  "target": "A"\n}\n'
    path = write(tmp_path, text)
    with pytest.raises(SCMError, match="not valid JSON") as ei:
        load_scm_json(path)
    assert "\n" not in str(ei.value)
    assert "line 4" in str(ei.value)


UNHASHABLE = [
    ("target_list", mutate(_set("target", ["C"]))),
    ("edge_end_list", mutate(lambda o: o["edges"].append([["A"], "B", 1.0]))),
    ("edge_end_object", mutate(lambda o: o["edges"].append(["A", {"v": "B"}, 1.0]))),
]


@pytest.mark.parametrize("case_id,obj", UNHASHABLE, ids=[c[0] for c in UNHASHABLE])
def test_non_string_variable_reference_raises_scmerror(tmp_path, case_id, obj):
    with pytest.raises(SCMError):
        load_scm_json(write(tmp_path, obj))
