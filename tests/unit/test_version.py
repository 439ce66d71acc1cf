"""The code version in every cell cache key: a digest of the library's sources."""

import glob
import importlib.metadata
import os
import shutil

from causal_grpo import version


def copy_sources(dst):
    for path in glob.glob(os.path.join(version.SOURCE_DIR, "*.py")):
        shutil.copy(path, dst)


def test_any_source_change_changes_the_digest_and_nothing_else_does(tmp_path):
    copy_sources(tmp_path)
    base = version.source_digest(str(tmp_path))
    assert base == version.source_digest(version.SOURCE_DIR)           # contents, not location
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "__pycache__").mkdir()
    assert version.source_digest(str(tmp_path)) == base
    sweep = tmp_path / "sweep.py"
    text = sweep.read_text()
    sweep.write_text(text + "\n")                                      # one byte more
    assert version.source_digest(str(tmp_path)) != base
    sweep.write_text(text)
    assert version.source_digest(str(tmp_path)) == base
    (tmp_path / "new_module.py").write_text("")                        # an empty new file
    assert version.source_digest(str(tmp_path)) != base
    os.unlink(tmp_path / "new_module.py")
    # Moving code between files changes it too (names and lengths are part of the digest).
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n"), b.write_text("")
    moved = version.source_digest(str(tmp_path))
    a.write_text(""), b.write_text("x = 1\n")
    assert version.source_digest(str(tmp_path)) != moved


def test_code_version_is_package_version_plus_digest_and_cached():
    v = version.code_version()
    assert v == f"{importlib.metadata.version('causal-grpo')}+{version.source_digest()[:16]}"
    assert version.code_version() is v
