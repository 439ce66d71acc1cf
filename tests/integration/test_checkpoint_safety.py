"""Crafted checkpoints at the CLI: each refused with one line and exit 2, nothing executed, no crash.

The loader runs in a subprocess (a crash shows as exit 139, not as a failed assertion in this
process). One subprocess drives every case through ``jobs.two_phase_training.main`` and reports
each exit code and stderr; two cases also run as their own ``python -m`` process.
"""

import json
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest

from causal_grpo import checkpoint as C
from causal_grpo.networks import PolicyConfig
from causal_grpo.phase1 import Phase1Config, init_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = PolicyConfig(hidden=16, layers=1, heads=2, lookahead=0, lookahead_prior=0.0)


class Gadget:
    """Unpickling it would run ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class ForgedDtype:
    """A numpy dtype whose state claims a 2^40-byte element (the old loader's segfault)."""

    def __reduce__(self):
        return (np.dtype, ("f4", False, True), (3, "<", None, None, None, 1 << 40, 1, 0x3F))


def _blob(params):
    return {"format": C.FORMAT, "version": C.VERSION, "architecture": {}, "params": params}


def _record(dtype="float32", shape=(16,), data=None):
    n = int(np.prod(shape)) if all(isinstance(s, int) and s >= 0 for s in shape) else 4
    return {"dtype": dtype, "shape": list(shape),
            "data": data if data is not None else bytes(4 * min(n, 64))}


def _first_param(ck):
    blob = pickle.loads((ck / C.PARAMS_FILE).read_bytes())
    m = sorted(blob["params"])[0]
    return blob, m, sorted(blob["params"][m])[0]


def _with_record(ck, **record):
    blob, m, k = _first_param(ck)
    blob["params"][m][k] = _record(**record)
    (ck / C.PARAMS_FILE).write_bytes(pickle.dumps(blob, protocol=4))


def _edit_config(ck, edit):
    cfg = json.loads((ck / C.CONFIG_FILE).read_text())
    edit(cfg)
    (ck / C.CONFIG_FILE).write_text(json.dumps(cfg))


def _version_1(ck):
    """A checkpoint as version 1 wrote it: numpy arrays in the pickle, version 1 in config."""
    blob, _, _ = _first_param(ck)
    blob["version"] = 1
    blob["params"] = {m: {k: np.frombuffer(r["data"], "<f4").reshape(r["shape"])
                          for k, r in sub.items()} for m, sub in blob["params"].items()}
    (ck / C.PARAMS_FILE).write_bytes(pickle.dumps(blob, protocol=4))
    _edit_config(ck, lambda c: c.update(version=1))


def _bare_version_1(ck):
    _version_1(ck)
    (ck / C.CONFIG_FILE).unlink()


def _pickle(ck, obj, protocol):
    (ck / C.PARAMS_FILE).write_bytes(pickle.dumps(obj, protocol=protocol))


CASES = {
    # name: (damage(ck, sentinel), words the one line must contain)
    "reduce_gadget": (lambda ck, s: _pickle(ck, _blob(Gadget(f"touch {s}")), 2),
                      "refusing to load posix.system"),
    "stack_global_gadget": (lambda ck, s: _pickle(ck, _blob(Gadget(f"touch {s}")), 4),
                            "refusing to load posix.system"),
    "forged_numpy_dtype": (lambda ck, s: _pickle(ck, _blob(ForgedDtype()), 4),
                           "holds numpy objects (numpy.dtype)"),
    "numpy_object_array": (lambda ck, s: _pickle(ck, _blob(np.array([Gadget(f"touch {s}")])), 4),
                           "holds numpy objects"),
    "object_dtype": (lambda ck, s: _with_record(ck, dtype="object"), "has dtype 'object'"),
    "string_dtype": (lambda ck, s: _with_record(ck, dtype="<U4"), "has dtype '<U4'"),
    "forged_dtype_name": (lambda ck, s: _with_record(ck, dtype="float32\x00O"), "has dtype"),
    "huge_shape": (lambda ck, s: _with_record(ck, shape=(2 ** 40, 2 ** 40)), "claims 1.21e+24 elements"),
    "negative_shape": (lambda ck, s: _with_record(ck, shape=(-1, 16)), "non-negative integers"),
    "bool_shape": (lambda ck, s: _with_record(ck, shape=(True,)), "non-negative integers"),
    "short_data": (lambda ck, s: None, None),   # filled in below: needs the template shape
    "version_1": (lambda ck, s: _version_1(ck), "read by commit 465dede"),
    "bare_version_1_pickle": (lambda ck, s: _bare_version_1(ck), "read by commit 465dede"),
    "config_string_version": (lambda ck, s: _edit_config(ck, lambda c: c.update(version="2")),
                              "the format version must be a whole number, got '2'"),
    "pickle_float_version": (lambda ck, s: _pickle(ck, {**_first_param(ck)[0], "version": 2.0}, 4),
                             "the format version must be a whole number, got 2.0"),
    "config_not_utf8": (lambda ck, s: (ck / C.CONFIG_FILE).write_bytes(b'{"a": "\xff\xfe"}'),
                        "is not UTF-8 text"),
    "config_not_json": (lambda ck, s: (ck / C.CONFIG_FILE).write_text("{oops"), "not valid JSON"),
    "config_nested_deep": (lambda ck, s: (ck / C.CONFIG_FILE).write_text("[" * 200_000 + "]" * 200_000),
                           "nested too deeply"),
    "config_huge_field": (lambda ck, s: _edit_config(ck, lambda c: c["architecture"].update(hidden=1e40)),
                          "'hidden' must be an integer in [1, 4096]"),
    "config_negative_field": (lambda ck, s: _edit_config(ck, lambda c: c["architecture"].update(layers=-2)),
                              "'layers' must be an integer in [1, 64]"),
    "config_fractional_field": (lambda ck, s: _edit_config(ck, lambda c: c["architecture"].update(n_bins=8.5)),
                                "'n_bins' must be an integer"),
    "config_string_field": (lambda ck, s: _edit_config(ck, lambda c: c["architecture"].update(heads="2")),
                            "'heads' must be an integer"),
}


def _short_data(ck, sentinel):
    blob, m, k = _first_param(ck)
    r = blob["params"][m][k]
    r["data"] = r["data"][:-4]
    (ck / C.PARAMS_FILE).write_bytes(pickle.dumps(blob, protocol=4))


CASES["short_data"] = (_short_data, "bytes of data, its dtype and shape need")


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Every case as its own checkpoint directory, and the subprocess's verdict on each."""
    root = tmp_path_factory.mktemp("crafted")
    params = init_params(Phase1Config(policy=CFG))
    for name, (damage, _) in CASES.items():
        ck = root / name
        C.save_checkpoint(str(ck), params, CFG, {}, {})
        damage(ck, root / f"SENTINEL_{name}")
    driver = (
        "import contextlib, io, json, sys\n"
        "from jobs import two_phase_training as T\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = T.main(['--grpo-checkpoint', sys.argv[1] + '/' + name, '--scm-type',\n"
        "                           'easy', '--methods', 'grpo_active', '--seeds', '1',\n"
        "                           '--n-interventions', '1', '--no-plots', '--quiet',\n"
        "                           '--output-dir', sys.argv[1] + '/out_' + name])\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    out[name] = [code, err.getvalue()]\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", driver, str(root)] + list(CASES), cwd=root,
                       env=os.environ | {"PYTHONPATH": ROOT}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    return root, json.loads(r.stdout.strip().splitlines()[-1])


def test_the_gadgets_are_what_they_say(tmp_path):
    """The REDUCE case uses GLOBAL + REDUCE, the STACK_GLOBAL case STACK_GLOBAL + REDUCE."""
    ops = {p: {op.name for op, _, _ in pickletools.genops(pickle.dumps(Gadget("x"), protocol=p))}
           for p in (2, 4)}
    assert {"GLOBAL", "REDUCE"} <= ops[2] and "STACK_GLOBAL" not in ops[2]
    assert {"STACK_GLOBAL", "REDUCE"} <= ops[4] and "GLOBAL" not in ops[4]


@pytest.mark.parametrize("name", list(CASES))
def test_a_crafted_checkpoint_is_one_line_exit_2_and_runs_nothing(crafted, name):
    root, verdict = crafted
    code, err = verdict[name]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert CASES[name][1] in lines[0], lines[0]
    assert not (root / f"SENTINEL_{name}").exists()
    assert not (root / f"out_{name}").exists()


@pytest.mark.parametrize("name", ["reduce_gadget", "config_nested_deep"])
def test_as_its_own_process_too(crafted, name, tmp_path):
    root, _ = crafted
    r = subprocess.run([sys.executable, "-m", "jobs.two_phase_training", "--grpo-checkpoint",
                        str(root / name), "--scm-type", "easy", "--methods", "grpo_active",
                        "--seeds", "1", "--output-dir", str(tmp_path / "o")], cwd=tmp_path,
                       env=os.environ | {"PYTHONPATH": ROOT}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert not (root / f"SENTINEL_{name}").exists() and not (tmp_path / "o").exists()
