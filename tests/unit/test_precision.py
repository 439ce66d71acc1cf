"""Every product of data runs at full float32 precision, on any device.

On NVIDIA GPUs from Ampere on, XLA's default for a float32 matrix product is TF32 (a 10-bit
mantissa). Measured on an H200 (docs/BENCHMARKS.md, "On a GPU"): sample covariances were off by
2.6e-4 relative and the simulator's values by 7.7e-4, and `er20` episodes no longer followed the
CPU's (other choices from the first steps, expected SHD off by up to 6); with full precision
every choice was the CPU's. CPUs compute float32 products in full either way, so no number here
can show the difference: the test reads the programs instead. Every matrix product in a Phase-2
episode of the plug-in chooser (the simulator, the sufficient statistics, the exact and the
order-MCMC posterior, their what-if updates, the plug-in fit) must ask for HIGHEST. The policy
network's products are not data and keep the default.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

from causal_grpo import active_learning as AL
from causal_grpo.results import f1_auc
from causal_grpo.scm_families import FamilyConfig, GraphKind, sample_family
from causal_grpo.surrogate import make_surrogate
from causal_grpo.sweep import SweepConfig
from jobs.benchmark import device_differences


def _products(jaxpr) -> list:
    """The dot_general equations of a jaxpr and of every jaxpr inside it (jit, scan,
    while, cond and switch branches, custom derivatives)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _products(inner)
    return found


@pytest.mark.parametrize("d", [6, 18])   # the exact DP; order MCMC above 16 variables
def test_every_product_in_an_episode_asks_for_full_precision(d):
    cfg = AL.EpisodeConfig(n_observational=5, n_interventions=2, lookahead_draws=1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    scms = jax.vmap(lambda k: sample_family(k, FamilyConfig(kind=GraphKind.ER, d=d)))(keys)
    surrogate = make_surrogate(cfg.surrogate, d, cfg.capacity)
    # The plug-in chooser's episode holds every product the built-in methods' episodes hold
    # (simulator, statistics, posterior) and those of its what-if updates and its fit.
    runner = AL.make_batch_runner(cfg, d, AL.make_plugin_selector(surrogate, 1))
    products = _products(jax.make_jaxpr(runner)(keys, scms, None, jnp.int32(0)).jaxpr)
    assert len(products) >= 20
    _assert_full_precision(products)


def test_the_neural_surrogates_products_ask_for_full_precision():
    """Its network reads the data (gated inputs) and its acyclicity term the edge
    probabilities it fits: both decide the edges it reports, so both are products of data."""
    from causal_grpo.surrogate import SurrogateConfig, SurrogateKind
    cfg = AL.EpisodeConfig(n_observational=5, n_interventions=1,
                           surrogate=SurrogateConfig(kind=SurrogateKind.NEURAL))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    scms = jax.vmap(lambda k: sample_family(k, FamilyConfig(kind=GraphKind.ER, d=4)))(keys)
    runner = AL.make_batch_runner(cfg, 4)        # every built-in method's selector
    products = _products(jax.make_jaxpr(runner)(keys, scms, None, jnp.int32(0)).jaxpr)
    # The forward and backward products of both terms, and the simulator's.
    assert len(products) >= 5
    _assert_full_precision(products)


def _assert_full_precision(products: list) -> None:
    for eqn in products:
        precision = eqn.params["precision"]
        assert precision == (jax.lax.Precision.HIGHEST,) * 2, (
            f"a product of shapes {[v.aval.shape for v in eqn.invars]} at {precision}\n"
            f"{eqn.source_info.traceback}")


def test_the_device_comparison_reports_what_differs_and_nothing_else(monkeypatch):
    """``benchmark devices`` (the CPU against an accelerator; none here) with the CPU twice, the
    second run altered by hand (seed 1's second intervention on another variable, one final edge
    probability moved across 0.5): exactly that is reported, the rest is equal."""
    from causal_grpo import sweep
    cfg = SweepConfig(scms=("er4",), methods=(AL.Method.RANDOM,), seeds=2, batch_size=2,
                      episode=AL.EpisodeConfig(n_observational=5, n_interventions=3))
    calls, run_batch = [], sweep.run_batch

    def altered(batch, cfg, policy=None):
        out = {k: v.copy() for k, v in run_batch(batch, cfg, policy).items()}
        calls.append(batch)
        if len(calls) == 2:
            out["variable"][1, 2] = (out["variable"][1, 2] + 1) % 4
            out["final_probs"][0, 0, 1] = 1.0 - out["final_probs"][0, 0, 1] + 0.25 * (
                out["final_probs"][0, 0, 1] == 0.5)
        return out

    monkeypatch.setattr(sweep, "run_batch", altered)
    cpu = jax.devices("cpu")[0]
    [row] = device_differences(cfg, cpu, cpu)
    assert row["seeds_choosing_differently"] == 1 and row["same_choice"] == 5 / 6
    assert row["final_edges_across_half"] == 1 and row["final_prob_max_diff"] > 0
    assert row["f1_max_diff"] == row["expected_shd_max_diff"] == 0
    assert row["seeds"] == 2 and row["scm_differs"] == 0
    assert row["f1_auc_first"] == row["f1_auc_second"] > 0


def test_the_device_comparison_runs_the_policy_as_the_sweep_does():
    """With a policy (``--grpo-checkpoint``), its cells on each device are the sweep's own cells
    of that policy: same choices, same numbers (the CPU twice here)."""
    from causal_grpo import sweep
    from causal_grpo.checkpoint import load_grpo_policy
    from causal_grpo.policy import policy_handle
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    policy = policy_handle(load_grpo_policy(os.path.join(root, "policies", "seed0")))
    cfg = SweepConfig(scms=("er4",), methods=(AL.Method.GRPO_ACTIVE,), seeds=2, batch_size=2,
                      episode=AL.EpisodeConfig(n_observational=5, n_interventions=3))
    cpu = jax.devices("cpu")[0]
    [row] = device_differences(cfg, cpu, cpu, policy._replace(params=jax.device_get(
        policy.params)))
    assert row["same_choice"] == 1 and row["seeds_choosing_differently"] == 0
    assert row["final_prob_max_diff"] == row["f1_max_diff"] == 0
    sweep_cells = sweep.run_batch(sweep.plan_batches(cfg)[0], cfg, policy)
    assert row["f1_auc_first"] == pytest.approx(float(f1_auc(sweep_cells["f1"]).mean()))


def test_benchmark_devices_compares_the_policy_the_sweep_acts_with(monkeypatch, capsys):
    """``benchmark devices --grpo-checkpoint`` hands the comparison the policy as Phase 2's
    sweep builds it (sampled, lookahead draws auto: the same digest), with grpo_active added to
    the default methods, the CPU first and the accelerator second (a stand-in: none here)."""
    from causal_grpo.checkpoint import load_grpo_policy
    from causal_grpo.policy import policy_handle
    from jobs import benchmark, two_phase_training

    class Card:
        platform, device_kind = "gpu", "NVIDIA H200"

    card, devices, seen = Card(), jax.devices, {}
    monkeypatch.setattr(jax, "devices", lambda *a: devices(*a) if a else [card])
    monkeypatch.setattr(benchmark, "device_differences",
                        lambda cfg, first, second, policy=None: seen.update(
                            cfg=cfg, first=first, second=second, policy=policy) or [])
    run = os.path.join(os.path.dirname(__file__), "..", "..", "policies", "seed0")
    assert benchmark.main(["devices", "--grpo-checkpoint", run, "--scms", "er4",
                           "--seeds", "2"]) == 0
    draws = two_phase_training.build_parser().get_default("lookahead_draws")
    assert seen["policy"].digest == policy_handle(load_grpo_policy(run),
                                                  lookahead_draws=draws).digest
    assert [m.value for m in seen["cfg"].methods] == ["random_active", "plugin_active",
                                                       "grpo_active"]
    assert seen["first"].platform == "cpu" and seen["second"] is card
    assert "cpu against NVIDIA H200 (gpu)" in capsys.readouterr().out
