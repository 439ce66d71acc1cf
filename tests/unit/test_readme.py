"""The README's results commands are exactly what ``make results`` runs, and each parses."""

from __future__ import annotations

import importlib
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _results_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("\n## Results"):text.index("\n## Using the pieces")]


def _commands(lines: list[str]) -> list[str]:
    """One string per shell command: continuations joined, comments and blanks dropped."""
    out, cur = [], ""
    for line in lines:
        line = line.split("  #")[0].rstrip()
        if line.endswith("\\"):
            cur += line[:-1].strip() + " "
            continue
        cur += line.strip()
        if cur:
            out.append(" ".join(cur.split()))
        cur = ""
    return out


def readme_commands() -> list[str]:
    section = _results_section()
    found = []          # (position in the section, index in its block, command)
    for m in re.finditer(r"```bash\n(.*?)```", section, re.S):
        for i, c in enumerate(_commands(m.group(1).splitlines())):
            found.append((m.start(), i, c))
    for m in re.finditer(r"`(python -m jobs\.[^`]*)`", section):
        found.append((m.start(), 0, " ".join(m.group(1).split())))
    return [c for *_, c in sorted(found)]


def makefile_commands() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = text[text.index("\nresults:") + 1:].split("\n\n")[0].splitlines()[1:]
    cmds = _commands([line.lstrip("\t") for line in recipe])
    return [c.replace("set -e; ", "").replace("$(PY)", "python").replace("$$", "$") for c in cmds]


def test_make_results_runs_the_readme_commands_in_order():
    readme = readme_commands()
    assert len(readme) == 7     # trainings, dense, eval, ceiling, scale, comparisons, ceiling
    assert makefile_commands() == readme


def test_every_results_command_parses():
    for cmd in readme_commands():
        argv = shlex.split(cmd.replace("$s", "0").replace("for s in 0 1 2; do ", "")
                           .replace("; done", ""))
        assert argv[:2] == ["python", "-m"]
        module = importlib.import_module(argv[2])
        module.build_parser().parse_args(argv[3:])    # an unknown flag exits 2 here
