"""Jobs whose stdout is a pipe (a log file, ``ray job submit``, CI) print each line as it
happens, and draw no progress bar."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _line_times(args, prefix, tmp_path):
    """Arrival times of the job's stdout lines starting with ``prefix``; its stderr."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("TQDM_DISABLE", None)
    err = tmp_path / "stderr"
    with open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=ferr)
        times = [time.time() for line in proc.stdout if line.startswith(prefix)]
        assert proc.wait(timeout=600) == 0, err.read_text()[-2000:]
    return times, err.read_text()


def test_phase1_iteration_lines_arrive_as_they_happen(tmp_path):
    # 40 iterations on 3-variable graphs; a line every 10: a buffered stdout would deliver them
    # all at once when the job exits.
    times, _ = _line_times(["jobs.train_grpo", "--max-variables", "3", "--eval-every", "0",
                            "--checkpoint-every", "0", "--output-dir", str(tmp_path / "p1")],
                           "iter ", tmp_path)
    assert len(times) == 5 and times[-1] - times[0] > 0.5, times


def test_phase2_progress_is_one_line_per_batch_without_a_bar(tmp_path):
    # The second batch (8 variables) compiles its own program after the first line is out.
    times, err = _line_times(["jobs.two_phase_training", "--scm-type", "easy,er8", "--methods",
                              "random_active", "--seeds", "2", "--n-observational", "13",
                              "--n-interventions", "7", "--no-plots",
                              "--output-dir", str(tmp_path / "p2")], "phase 2: ", tmp_path)
    assert len(times) == 2 and times[1] - times[0] > 0.5, times
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err
