# The two commands of the README. Both create the virtualenv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: main test results install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Main job: see README ("What `make main` does, prints and writes"). Its flags go in ARGS,
# e.g. make main ARGS="--num-workers 1".
main: $(STAMP)
	$(PY) -m jobs.main $(ARGS)

# Test suite (CI runs exactly this). Two processes: compiling, which dominates the suite, uses
# one core per process; the tests that start Ray run one after another in one of them
# (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2

# Every results table of the README, from scratch, in the README's order (about 3.5 h on
# 2 cores). Finished trainings, Phase-2 batches and scale rows are kept, so rerunning resumes.
# The commands are the README's (tests/unit/test_readme.py).
results: $(STAMP)
	set -e; for s in 0 1 2; do $(PY) -m jobs.train_grpo --seed $$s --output-dir runs/seed$$s; done
	$(PY) -m jobs.train_grpo --scm-family dense --output-dir runs/dense
	$(PY) -m jobs.benchmark eval --grpo-checkpoint runs/seed0 runs/seed1 runs/seed2 \
	    --protocol-checkpoint runs/dense --output-dir runs/eval
	$(PY) -m jobs.benchmark ceiling --scms easy,medium,hard,er10,sf10 --seeds 50 \
	    --base-seed 2000000000 --out runs/ceiling.csv
	$(PY) -m jobs.benchmark scale --dims 10,15,20,30,50,100 --out runs/scale.csv
	set -e; for s in 0 1 2; do $(PY) -m jobs.two_phase_training --compare --methods uncertainty_active \
	    --scm-type er50,sf100 --seeds 30 --batch-size 15 --grpo-checkpoint runs/seed$$s \
	    --num-workers 2 --output-dir runs/phase2_scale_seed$$s; done
	$(PY) -m jobs.benchmark ceiling --scms er50,sf100 --seeds 30 --draws 1 --batch-size 15 \
	    --out runs/ceiling_scale.csv

clean:
	rm -rf $(VENV) phase2_results grpo_runs
