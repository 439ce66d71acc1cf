"""Jobs whose stdout is a pipe (a log file, ``ray job submit``, CI) print each line as it
happens, and draw no progress bar."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lines(args, tmp_path):
    """The job's stdout lines with their arrival times; its stderr."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("TQDM_DISABLE", None)
    err = tmp_path / "stderr"
    with open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=ferr)
        lines = [(time.time(), line.rstrip("\n")) for line in proc.stdout]
        assert proc.wait(timeout=600) == 0, err.read_text()[-2000:]
    return lines, err.read_text()


def _line_times(args, prefix, tmp_path):
    """Arrival times of the job's stdout lines starting with ``prefix``; its stderr."""
    lines, err = _lines(args, tmp_path)
    return [t for t, line in lines if line.startswith(prefix)], err


def test_phase1_iteration_lines_arrive_as_they_happen(tmp_path):
    # 40 iterations on 3-variable graphs; a line every 10: a buffered stdout would deliver them
    # all at once when the job exits.
    times, _ = _line_times(["jobs.train_grpo", "--max-variables", "3", "--eval-every", "0",
                            "--checkpoint-every", "0", "--output-dir", str(tmp_path / "p1")],
                           "iter ", tmp_path)
    assert len(times) == 5 and times[-1] - times[0] > 0.5, times


def test_phase2_progress_is_one_line_per_batch_and_each_scm_table_comes_when_it_is_done(
        tmp_path):
    # The second batch (8 variables) compiles its own program after the first line is out.
    lines, err = _lines(["jobs.two_phase_training", "--scm-type", "easy,er8", "--methods",
                         "random_active", "--seeds", "2", "--n-observational", "13",
                         "--n-interventions", "7", "--no-plots",
                         "--output-dir", str(tmp_path / "p2")], tmp_path)
    progress = [i for i, (_, line) in enumerate(lines) if line.startswith("phase 2: ")]
    assert len(progress) == 2 and lines[progress[1]][0] - lines[progress[0]][0] > 0.5, lines
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err
    # easy's table arrives between the two batches and is the final table's easy part; the
    # last SCM's comes only with the final table.
    text = [line for _, line in lines]
    assert text[progress[0] + 1] == ("easy finished (1 of 2 SCMs; every table is printed again "
                                     "at the end):")
    early = text[progress[0] + 2:progress[1]]
    final = text[progress[1] + 1:]
    assert early[:2] == ["", "### easy"] and "### er8" not in early
    cut = final.index("### er8")
    assert final[:cut] == early[1:] and "finished" not in " ".join(final)
    assert final[-1].startswith("results written to")
