"""The main job (``make main``): Phase-2 comparison of the intervention selectors.

Runs ``jobs.two_phase_training`` on easy/medium/hard with every non-learned selector, 30
seeds, 30 observational samples + 50 interventions, the exact DAG-posterior surrogate, and
writes everything to ``phase2_results/``.
"""

from __future__ import annotations

import sys

from jobs import two_phase_training

ARGS = ["--scm-type", "easy,medium,hard",
        "--methods", "random_active,round_robin_active,uncertainty_active,oracle_active,observational",
        "--seeds", "30", "--n-observational", "30", "--n-interventions", "50",
        "--output-dir", "phase2_results"]


def main(argv: list[str] | None = None) -> int:
    return two_phase_training.main(ARGS + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
