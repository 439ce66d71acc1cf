# The two commands of the README. Both create the virtualenv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: main test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Main job: see README ("What the main job does").
main: $(STAMP)
	$(PY) -m jobs.main

# Test suite (CI runs exactly this). Two processes: compiling, which dominates the suite, uses
# one core per process; the tests that start Ray run one after another in one of them
# (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2

clean:
	rm -rf $(VENV) phase2_results grpo_runs
