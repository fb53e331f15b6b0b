"""benchmarks/verdict_operating.py: the generator reproduces MRPC's floor, its population values match a
brute-force simulation, the tuned candidates reach their shortfall, and a tiny run of the scenario loop gives
sensible rates."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.characteristics.calibration import CalibrationCharacteristic
from plugins.characteristics.errors import ErrorsCharacteristic

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "verdict_operating.py"
_spec = importlib.util.spec_from_file_location("verdict_operating", _PATH)
vo = importlib.util.module_from_spec(_spec)
sys.modules["verdict_operating"] = vo  # dataclasses resolve their module by name
_spec.loader.exec_module(vo)

RECIPE = vo.Recipe()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors of a few thousand rows: threads only contend (as the benchmark runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _simulate(recipe, seeds, n, rng):
    """Brute force: correctness and top-label confidence of each seed on ``n`` shared examples."""
    ex = vo.Examples.draw(recipe, rng, n)
    g = 2 * ex.labels - 1
    out = []
    for i in range(len(seeds)):
        logits = vo.model_logits(recipe, ex, seeds.take(slice(i, i + 1)), rng).astype(np.float64)
        u = g * (logits[:, 1] - logits[:, 0])
        out.append((u > 0, 1 / (1 + np.exp(-np.abs(u))), 1 / (1 + np.exp(-u))))
    return out


def _ece(correct, conf):
    bins = np.digitize(conf, np.linspace(0, 1, vo.N_BINS + 1)[1:-1], right=True)
    return np.abs(np.bincount(bins, weights=correct - conf, minlength=vo.N_BINS)).sum() / conf.shape[0]


def test_population_values_match_a_large_simulation():
    """The quadratures (n -> infinity) agree with 400,000 simulated examples, perturbed seeds included."""
    seeds = vo.Seeds(
        quality=np.array([0.08, -0.05, 0.0]),
        bias=np.array([0.1, -0.12, 0.03]),
        log_noise=np.array([0.1, -0.1, 0.0]),
        log_confidence=np.array([0.2, 0.5, 0.3]),
        extra_noise=np.array([0.0, 0.3, 0.0]),
        gamma=np.array([1.0, 1.0, 1.6]),
    )
    n = 400_000
    sim = _simulate(RECIPE, seeds, n, np.random.default_rng(3))
    pop = vo.model_population(RECIPE, seeds)
    for i, (correct, conf, p_true) in enumerate(sim):
        assert correct.mean() == pytest.approx(pop["accuracy"][i], abs=0.004)
        assert _ece(correct, conf) == pytest.approx(pop["ece"][i], abs=0.004)
        assert np.mean(2 * (1 - p_true) ** 2) == pytest.approx(pop["brier"][i], abs=0.004)
        assert np.mean(-np.log(p_true)) == pytest.approx(pop["nll"][i], abs=0.006)
    pairs = vo.pair_errors(RECIPE, seeds.take(np.array([0, 0])), seeds.take(np.array([1, 2])))
    for j, b in enumerate((1, 2)):
        wa, wb = ~sim[0][0], ~sim[b][0]
        assert (wa & wb).sum() / (wa | wb).sum() == pytest.approx(pairs["error_jaccard"][j], abs=0.006)
        assert (wa != wb).mean() == pytest.approx(pairs["flip_rate"][j], abs=0.003)


def test_reference_vs_replica_reproduces_mrpc_floor():
    """On average over seeds: accuracy ~0.78, error Jaccard ~0.69, flip rate ~0.08 (n -> infinity), and at
    n = 1,725 through the real characteristics |dECE| ~0.03 with ECE ~0.04-0.07."""
    rng = np.random.default_rng(0)
    ref, rep = vo.Seeds.draw(RECIPE, rng, 2000), vo.Seeds.draw(RECIPE, rng, 2000)
    pe = vo.pair_errors(RECIPE, ref, rep)
    assert vo.model_population(RECIPE, ref)["accuracy"].mean() == pytest.approx(0.78, abs=0.015)
    assert pe["error_jaccard"].mean() == pytest.approx(0.69, abs=0.02)
    assert pe["flip_rate"].mean() == pytest.approx(0.08, abs=0.01)
    assert pe["error_jaccard"].std() > 0.005  # the floor itself varies from seed to seed
    abs_ece, ece = [], []
    cal = CalibrationCharacteristic(n_bins=10)
    for j in range(40):
        ex = vo.Examples.draw(RECIPE, rng, 1725)
        outs = [
            vo.model_outputs(name, vo.model_logits(RECIPE, ex, s.take(slice(j, j + 1)), rng), ex.labels)
            for name, s in (("ref", ref), ("rep", rep))
        ]
        stats = {s.name: s for s in cal.pair_statistics(*outs)}
        abs_ece.append(stats["abs_ece_uniform_diff"].estimate())
        ece.append(cal.per_model(outs[0]).metrics["ref/ece_uniform"])
    assert np.mean(abs_ece) == pytest.approx(0.03, abs=0.012)
    assert 0.035 < np.mean(ece) < 0.08


@pytest.fixture(scope="module")
def truths():
    """A small tuning: three statistics at shortfall 0 and 2x margin, the absolute Jaccard candidate."""
    return vo.tune(
        RECIPE,
        keys=("errors/error_jaccard", "errors/flip_rate", "calibration/ece_uniform_diff"),
        levels=(0.0, 2.0),
        absolute=("errors/error_jaccard",),
        n_seeds=1500,
    )


def test_tuned_candidates_reach_their_population_shortfall(truths):
    """Re-estimated on independent seed draws, and checked by brute force for flip rate."""
    for (key, level), (got, se) in truths.achieved.items():
        target = level * vo.STATISTICS[key].margin
        assert got == pytest.approx(target, abs=max(0.1 * vo.STATISTICS[key].margin, 4 * se))
    assert truths.absolute_achieved["errors/error_jaccard"] == pytest.approx(0.5, abs=0.005)
    # brute force: E over seed triples of flip(ref, cand) - flip(ref, replica), n = 5,000 each
    rng = np.random.default_rng(11)
    sigma_x = truths.knobs["errors/flip_rate", 2.0]
    diffs = []
    for _ in range(200):
        seeds = vo.Seeds.draw(RECIPE, rng, 3)
        seeds = dataclasses.replace(seeds, extra_noise=np.array([0.0, 0.0, sigma_x]))
        (c_ref, *_), (c_rep, *_), (c_cand, *_) = _simulate(RECIPE, seeds, 5000, rng)
        diffs.append(np.mean(c_ref != c_cand) - np.mean(c_ref != c_rep))
    assert np.mean(diffs) == pytest.approx(2 * vo.STATISTICS["errors/flip_rate"].margin, abs=0.004)


def test_head_equals_the_characteristics_on_the_first_rows():
    """The benchmark judges n < n_max on the first rows of each pair statistic; the characteristics on
    the first rows of the outputs give the same statistic."""
    rng = np.random.default_rng(5)
    ex = vo.Examples.draw(RECIPE, rng, 300)
    seeds = vo.Seeds.draw(RECIPE, rng, 2)
    outs = [
        vo.model_outputs(f"m{i}", vo.model_logits(RECIPE, ex, seeds.take(slice(i, i + 1)), rng), ex.labels)
        for i in range(2)
    ]
    full = vo._pair_statistics(*outs, ("errors", "calibration"))
    small = [o.select(torch.arange(40)) for o in outs]
    direct = {f"errors/{s.name}": s for s in ErrorsCharacteristic().pair_statistics(*small)}
    direct.update({f"calibration/{s.name}": s for s in CalibrationCharacteristic().pair_statistics(*small)})
    for key, stat in direct.items():
        assert vo._head(full[key], 40).estimate() == pytest.approx(stat.estimate(), abs=1e-12)


def test_scenario_loop_gives_sensible_rates(truths):
    """A few repetitions at n = 1,725, k = 3: rates in [0, 1]; at twice the margin the new procedure rarely
    says equivalent; a candidate no worse than a fresh seed is rarely not equivalent; deterministic."""
    plan = vo.Plan(RECIPE, truths, n_bootstrap=200, seed=1, sizes=(1725,), replicas=(3,), small_sizes=(50,))
    results = vo.run(plan, reps=6)
    assert vo.run_repetition(plan, 2) == results[2]
    decisions: dict[tuple, list[str]] = {}
    for r in results:
        for procedure, key, level, _n, _k, d in r["main"]:
            decisions.setdefault((procedure, key, level), []).append(d)
    for ds in decisions.values():
        assert len(ds) == 6 and set(ds) <= set(vo.DECISIONS)
    for key in ("errors/error_jaccard", "errors/flip_rate"):
        assert decisions["new", key, 2.0].count("equivalent") <= 1
        assert decisions["new", key, 0.0].count("not_equivalent") <= 2
    for r in results:
        assert {kk for kk, _ in r["conditional"]} == {k for k, _ in truths.knobs}
        assert r["conditional"]["errors/error_jaccard", 0.0] == pytest.approx(0.0, abs=0.05)
        assert r["absolute"] and r["small"] == []  # no statistic was tuned at the margin
    text = vo.tables(plan, results, seconds=1.0, argv=["--quick"])
    assert "## Full table" in text and "| error_jaccard | new | 2x margin | 1,725 | 3 |" in text


def test_wilson_and_minimum_examples():
    """Wilson intervals (Agresti & Coull 1998's example values) and the minimum-n rule."""
    p, lo, hi = vo.wilson(0, 10)
    assert (p, lo) == (0.0, 0.0) and hi == pytest.approx(0.2775, abs=1e-4)
    p, lo, hi = vo.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    rates = {
        ("a", 10): (10, 100, 5, 50),
        ("a", 50): (3, 100, 1, 50),
        ("a", 100): (5, 100, 1, 50),  # a relapse above 4% at 100
        ("a", 200): (2, 100, 1, 50),
        ("b", 10): (0, 100, 0, 50),
        ("b", 50): (0, 100, 0, 50),
        ("b", 100): (0, 100, 0, 50),
        ("b", 200): (0, 100, 0, 50),
    }
    assert vo.minimum_examples(rates, ["a", "b"]) == 200
    assert vo.minimum_examples(rates, ["b"]) == 10
    assert vo.minimum_examples(rates, ["a"], conditional=True) == 50
    assert vo.minimum_examples({("a", 10): (9, 10, 0, 0)}, ["a"]) is None
