"""Atomic writes: a reader sees the old file or the whole new one, never a part."""

import glob
import os

import numpy as np
import pytest

from causal_grpo import io


def test_write_replaces_whole_file(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("old\n")
    io.write_atomic(str(p), lambda t: open(t, "w").write("new\n"))
    assert p.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["r.csv"]


def test_failed_writer_leaves_old_file_and_no_partial(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("old\n")

    def boom(t):
        open(t, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_atomic(str(p), boom)
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["r.csv"]


def _old_files(tmp_path):
    for name in ("a.txt", "b.txt", "stale.txt"):
        (tmp_path / name).write_text("old")


def test_one_update_interrupted_while_writing_leaves_every_old_file(tmp_path):
    _old_files(tmp_path)

    def interrupted(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with io.one_update():
            io.write_text(str(tmp_path / "a.txt"), "new")
            io.remove(str(tmp_path / "stale.txt"))
            io.write_atomic(str(tmp_path / "b.txt"), interrupted)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "stale.txt"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"old"}


def test_one_update_holds_an_interrupt_until_every_file_is_in_place(tmp_path, monkeypatch):
    """Ctrl-C at the first rename takes effect after the last one."""
    import signal
    _old_files(tmp_path)
    real_replace, renamed = os.replace, []

    def replace(src, dst):
        if not renamed:
            os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)
        renamed.append(os.path.basename(dst))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with io.one_update():
            io.write_text(str(tmp_path / "a.txt"), "new")
            io.write_text(str(tmp_path / "b.txt"), "new")
            io.remove(str(tmp_path / "stale.txt"))
    assert renamed == ["a.txt", "b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"new"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_partial_file_is_hidden_but_keeps_the_extension(tmp_path):
    # A writer killed mid-way leaves its temporary behind; globs for results must not see it,
    # while format-sniffing writers (savefig) still need the extension.
    with io.atomic_path(str(tmp_path / "cell.npz")) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".") and tmp.endswith(".npz")
        assert glob.glob(str(tmp_path / "*.npz")) == []
        open(tmp, "wb").write(b"x")
    assert glob.glob(str(tmp_path / "*.npz")) == [str(tmp_path / "cell.npz")]


def test_written_file_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_atomic(str(tmp_path / "a"), lambda t: open(t, "w").write("x"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o644


def test_cell_store_drops_partials_of_dead_writers_only(tmp_path):
    from causal_grpo.sweep import CellStore
    store = CellStore(str(tmp_path), "abc")
    old = os.path.join(store.dir, ".tmp-1-x.npz")
    fresh = os.path.join(store.dir, ".tmp-2-y.npz")
    for p in (old, fresh):
        open(p, "wb").write(b"half")
    os.utime(old, (0, 0))
    CellStore(str(tmp_path), "abc")
    assert not os.path.exists(old)
    assert os.path.exists(fresh)         # may belong to a writer still running


def test_cell_names_of_distinct_scms_never_collide(tmp_path):
    """SCM paths that differ only in characters a file name cannot keep (``/`` vs ``_``) once
    shared one cell, so a rerun served one SCM's results for the other; a long path made a
    name the file system refused."""
    from causal_grpo.active_learning import Method
    from causal_grpo.sweep import Batch, CellStore
    store = CellStore(str(tmp_path), "abc")

    def name(scm):
        return os.path.basename(store.path(Batch(scm, Method.RANDOM, (0, 1, 2))))

    assert name("er10") == "er10__random_active__0-2.npz"          # plain names as before
    assert name("/x/a/b.json") != name("/x/a_b.json")
    long = "/data/" + "d" * 300 + "/net.json"
    assert len(name(long)) < 160 and name(long) != name(long[:-8] + "x.json")
    store.save(Batch(long, Method.RANDOM, (0,)), {"a": np.zeros(1)})


def test_output_dir_too_deep_for_the_longest_result_name_is_refused(tmp_path):
    """A path with room for a short probe but not for comparison_results_<long name>.pkl."""
    from causal_grpo.errors import UserError

    limit = os.pathconf(str(tmp_path), "PC_PATH_MAX")
    deep = str(tmp_path)
    while len(deep) < limit - 100:
        deep = os.path.join(deep, "d" * min(200, limit - 100 - len(deep)))
    with pytest.raises(UserError, match="not writable"):
        io.ensure_writable_dir(deep)
    io.ensure_writable_dir(os.path.dirname(os.path.dirname(deep)))  # a little higher is fine


def test_dirs_made_by_a_refused_runs_checks_are_removed_and_nothing_else(tmp_path):
    from causal_grpo.errors import UserError
    kept = tmp_path / "kept"
    kept.mkdir()
    new, filled = tmp_path / "a" / "b" / "c", tmp_path / "f" / "g"
    with pytest.raises(UserError, match="refused"):
        with io.no_new_dirs_if_refused(str(kept), str(new), str(filled)):
            for d in (kept, new, filled):
                io.ensure_writable_dir(str(d))
            for d in (new, filled):                     # a sweep's cells/<digest>/, empty
                io.ensure_writable_dir(str(d / "cells" / "0123"))
            (filled / "x").write_text("x")             # written to: kept
            raise UserError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "kept"]
    assert (filled / "x").exists() and kept.is_dir() and not (filled / "cells").exists()
    with io.no_new_dirs_if_refused(str(new)):           # accepted: the directory stays
        io.ensure_writable_dir(str(new))
    assert new.is_dir()
    # Another run made the directory (and its cells) while this one was starting: this one
    # is refused (the other holds it) and leaves it as it is.
    theirs = tmp_path / "theirs"
    with pytest.raises(UserError, match="in use by another run"):
        with io.no_new_dirs_if_refused(str(theirs)):
            (theirs / "cells" / "0123").mkdir(parents=True)       # as the other run made them
            held = os.open(theirs, os.O_RDONLY)
            try:
                import fcntl
                fcntl.flock(held, fcntl.LOCK_EX)
                io.ensure_writable_dir(str(theirs), exclusive=True)
            finally:
                os.close(held)
    assert (theirs / "cells" / "0123").is_dir()



def test_a_write_the_disk_refuses_mid_run_is_one_line_and_exit_1(capsys, tmp_path):
    """/dev/full refuses every write as a full disk does (ENOSPC); a job that meets it ends with
    one line, exit 1. A read-only cell directory found on resume is refused before the run."""
    from causal_grpo import sweep
    from causal_grpo.errors import UserError
    from jobs._cli import user_errors_exit_2

    @user_errors_exit_2("job")
    def job():
        with open("/dev/full", "w") as f:
            f.write("x" * 10)
            f.flush()

    with pytest.raises(SystemExit) as e:
        job()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["job: storage failed: No space left on device; finished work is kept: free "
                   "space or fix the directory, then rerun to resume"]

    @user_errors_exit_2("job")
    def other():
        raise FileNotFoundError(2, "No such file or directory", "x")   # not the disk's refusal

    with pytest.raises(FileNotFoundError):
        other()
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "0123").write_text("in the way")
    with pytest.raises(UserError, match="cells/0123 exists and is not a directory"):
        sweep.CellStore(str(tmp_path / "cells"), "0123")
