"""Operating characteristics of the verdict: how often it says each decision when the truth is known.

    flock /work/heavy.lock python benchmarks/verdict_operating.py [--reps 250] [--n-bootstrap 400]
        [--quick] [--workers 1] [--out docs/verdict_operating.md] [--seed 0] [--tune-seeds 20000]
        [--seed-scale 1.0]

(12.4 min on one core of a busy machine; ``--quick``: 16 repetitions, 200 resamples, about 35 s.)

What is simulated (an MRPC-like binary task, 68% positive; :class:`Recipe`). Example ``i`` has a label
``y_i`` (sign ``g_i = ±1``) and a difficulty ``m_i ~ N(mu, tau²)`` shared by every model. A model (one
fine-tuning seed ``s``) scores it, in the direction of the correct class, with
``u_si = m_i + delta_s + c_s·g_i + sigma_s·eps_si`` and answers with the logit ``l_si = g_i·beta_s·u_si``
(class 1 minus class 0, so the model is right iff ``u_si > 0`` and its confidence is
``sigmoid(beta_s·|u_si|)``). ``eps_si ~ N(0, 1)`` is the seed-to-seed churn of single examples; the
SEED-LEVEL effects, drawn once per seed, make the noise floor itself vary from seed to seed: a quality
shift ``delta_s``, a class bias ``c_s`` (an intercept), a churn scale ``sigma_s = sigma·exp(eta_s)`` and a
confidence scale ``beta_s = beta0·exp(k_s)`` (``beta0 = 2 mu / (tau² + sigma²)`` is the calibrated slope of a
seed without effects; ``kappa0`` > 1 makes the recipe over-confident, as fine-tuned BERTs are). The reference
and the ``k`` replicas are independent seeds of the recipe; the candidate is another seed plus a
"compression" perturbation: extra per-example noise ``sigma_x`` (``sigma_s² -> sigma_s² + sigma_x²``) for the
errors statistics, an over-confidence factor ``gamma`` (``beta_s -> gamma·beta_s``, which leaves every
prediction as it was) for the calibration statistics. Every model's outputs go through the real
characteristics (``ErrorsCharacteristic``, ``CalibrationCharacteristic(n_bins=10)``) and the real
``trustequiv.verdict.verdict.judge_statistic``.

The truths (all with n -> infinity: a statistic's population value is that of infinitely many examples, e.g.
ECE is ``sum_b |P(bin b)(acc_b - conf_b)|`` over the 10 equal-width bins of the population; the finite-sample
bias of binned ECE and of ``|dECE|`` is thus part of what is measured, not of the truth). ``S(a, b)`` is a
pair statistic, the shortfall is ``S_floor - S_cand`` where higher means alike, ``S_cand - S_floor`` where
lower does:

- population truth: ``E[S(ref, replica)]`` vs ``E[S(ref, candidate)]``, the expectation over all three seeds'
  effects and over examples. The candidate's perturbation (``sigma_x`` or ``gamma``) is found by bisection so
  that this shortfall is 0, the margin or twice the margin for the statistic under test; the expectations
  over examples are exact (numerical integration: Gauss-Legendre / trapezoid quadrature over the Gaussian
  difficulty, :func:`model_population`, :func:`pair_population`), those over seeds a Monte Carlo with
  common random numbers (``--tune-seeds`` draws of seed effects, 20,000 by default). It says whether the
  *recipe plus compression* is equivalent.
- conditional truth (per repetition): the reference's and the candidate's seed effects as drawn, the
  expectation over examples (exact, as above) and over replica seeds (a fixed bank of 20,000 draws, 2,000
  for the errors statistics: Monte Carlo errors of 1e-4 to 4e-4 in the floor, :class:`ReplicaBank`). It
  says whether *this candidate* is equivalent for *this reference*: the candidate's own seed luck is part of
  it. Against it we report
  ``P(equivalent | conditional shortfall >= margin)`` (a false "equivalent"; nominal <= 2.5%) and
  ``P(not_equivalent | conditional shortfall <= 0)`` (a false "not equivalent" of a candidate no worse than
  a fresh seed; nominal <= 2.5%), each with the number of repetitions it is taken over.

Scenarios: population shortfall 0, margin, 2x margin; n = 400 and 1,725 examples (the first 400 of the same
draw); k = 1 and 3 replicas (k = 1 is the first of the three); procedures ``today`` (``replica_resampling``
False; calibration judged on ``abs_ece_uniform_diff`` / ``abs_brier_diff``, force-judged) and ``new``
(``replica_resampling`` True; ``error_jaccard``, ``flip_rate``, ``agreement``, ``ece_uniform_diff``,
``brier_diff``, ``nll_diff``). In a binary task two models agree on a label iff they agree on correctness,
so ``agreement = 1 - flip_rate`` exactly and its rows mirror flip rate's. The absolute path (no floor):
candidates with population ``E[J] = 0.5`` and ``E[flip] = 0.10``, at the thresholds ``error_jaccard >= 0.5``,
``flip_rate <= 0.10`` (nominal rate of equivalent: 5%, the one-sided test at alpha = 1 - confidence). Small
n (5 ... 200, the first rows of the same draw) at shortfall = margin, k = 3, the new procedure, without a
minimum number of examples: the smallest n where every statistic's rate of equivalent is <= 4% (2.5% + 1.5
points) is the suggested ``min_examples``.

Output: the tables on stdout and as markdown in ``--out`` (rates with Wilson 95% intervals). The run is
deterministic given ``--seed`` (repetition ``r`` draws from ``default_rng([seed, r])``; the verdict's
bootstrap seed is ``r``), whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import expit, ndtr
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.characteristics.calibration import CalibrationCharacteristic
from plugins.characteristics.errors import ErrorsCharacteristic
from trustequiv.characteristic import PairStatistic
from trustequiv.outputs import ModelOutputs
from trustequiv.verdict.verdict import VerdictSettings, judge_statistic

# ------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Statistic:
    """One judged statistic: ``key`` (``"<characteristic>/<name>"``), ``alike``, its margin behind the
    floor, and which perturbation of the candidate moves it (``"noise"``: ``sigma_x``; ``"confidence"``:
    ``gamma``)."""

    key: str
    alike: str
    margin: float
    knob: str

    @property
    def name(self) -> str:
        """The statistic's name within its characteristic."""
        return self.key.split("/", 1)[1]


STATISTICS: dict[str, Statistic] = {
    s.key: s
    for s in (
        Statistic("errors/error_jaccard", "higher", 0.05, "noise"),
        Statistic("errors/flip_rate", "lower", 0.02, "noise"),
        Statistic("errors/agreement", "higher", 0.02, "noise"),
        Statistic("calibration/abs_ece_uniform_diff", "lower", 0.01, "confidence"),
        Statistic("calibration/abs_brier_diff", "lower", 0.01, "confidence"),
        Statistic("calibration/ece_uniform_diff", "lower", 0.01, "confidence"),
        Statistic("calibration/brier_diff", "lower", 0.01, "confidence"),
        Statistic("calibration/nll_diff", "lower", 0.03, "confidence"),
    )
}
#: the statistics each procedure judges.
PROCEDURES: dict[str, tuple[str, ...]] = {
    "today": (
        "errors/error_jaccard",
        "errors/flip_rate",
        "errors/agreement",
        "calibration/abs_ece_uniform_diff",
        "calibration/abs_brier_diff",
    ),
    "new": (
        "errors/error_jaccard",
        "errors/flip_rate",
        "errors/agreement",
        "calibration/ece_uniform_diff",
        "calibration/brier_diff",
        "calibration/nll_diff",
    ),
    # the new procedure asked the population question (VerdictSettings.candidate_seed_spread)
    "recipe": (
        "errors/error_jaccard",
        "errors/flip_rate",
        "calibration/ece_uniform_diff",
        "calibration/brier_diff",
        "calibration/nll_diff",
    ),
}
#: the absolute path's thresholds (no floor), as in conf/evaluate.yaml.
ABSOLUTE: dict[str, float] = {"errors/error_jaccard": 0.5, "errors/flip_rate": 0.10}
#: shortfall levels, in margins.
LEVELS: tuple[float, ...] = (0.0, 1.0, 2.0)
SIZES: tuple[int, ...] = (400, 1725)
REPLICAS: tuple[int, ...] = (1, 3)
SMALL_SIZES: tuple[int, ...] = (5, 10, 20, 50, 100, 200)
N_BINS = 10
DECISIONS = ("equivalent", "inconclusive", "not_equivalent")


def verdict_settings(procedure: str, n_bootstrap: int, seed: int) -> VerdictSettings:
    """The verdict's settings for ``procedure`` (``"today"``: examples resampled only; ``"new"``: replicas
    drawn too), with this benchmark's margins and absolute thresholds and no minimum of examples."""
    return VerdictSettings.from_mapping(
        {
            "confidence": 0.95,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "margins": {k: s.margin for k, s in STATISTICS.items()},
            "absolute": dict(ABSOLUTE),
            "replica_resampling": procedure in ("new", "recipe"),
            "candidate_seed_spread": procedure == "recipe",
            "min_examples": 0,
        }
    )


# --------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class Recipe:
    """The generator's parameters (see the module docstring); the defaults reproduce MRPC's measured floor
    on average (``python benchmarks/verdict_operating.py`` prints it).

    Attributes:
        p_positive: share of positive labels. mu, tau: mean and spread of the shared difficulty.
        sigma: per-example seed-to-seed noise (``tau² + sigma² = 1`` sets the scale).
        sd_quality: spread of the seed-level quality shift ``delta_s``. sd_bias: of the class bias ``c_s``.
        sd_log_noise: of ``eta_s`` (churn scale). kappa0: over-confidence of the recipe;
        sd_log_confidence: spread of ``k_s`` around ``log kappa0``.
    """

    p_positive: float = 0.68
    mu: float = 0.78
    tau: float = 0.973
    sigma: float = math.sqrt(1 - 0.973**2)
    sd_quality: float = 0.04
    sd_bias: float = 0.06
    sd_log_noise: float = 0.08
    kappa0: float = 1.45
    sd_log_confidence: float = 0.25

    @property
    def beta0(self) -> float:
        """The calibrated slope of a seed without effects (``u ~ N(mu, tau² + sigma²)`` for both classes)."""
        return 2.0 * self.mu / (self.tau**2 + self.sigma**2)

    def scaled(self, seed_scale: float) -> Recipe:
        """The recipe with every seed-level spread multiplied by ``seed_scale`` (a sensitivity check)."""
        return dataclasses.replace(
            self,
            sd_quality=self.sd_quality * seed_scale,
            sd_bias=self.sd_bias * seed_scale,
            sd_log_noise=self.sd_log_noise * seed_scale,
            sd_log_confidence=self.sd_log_confidence * seed_scale,
        )


@dataclass(frozen=True)
class Seeds:
    """Seed-level effects of ``M`` models (arrays of shape ``(M,)``, or broadcastable), with the candidate's
    perturbation (``extra_noise`` = ``sigma_x``, ``gamma``; 0 and 1 for a plain seed of the recipe)."""

    quality: np.ndarray
    bias: np.ndarray
    log_noise: np.ndarray
    log_confidence: np.ndarray
    extra_noise: np.ndarray
    gamma: np.ndarray

    @classmethod
    def draw(cls, recipe: Recipe, rng: np.random.Generator, m: int) -> Seeds:
        """``m`` independent seeds of the recipe (no perturbation)."""
        z = rng.standard_normal((4, m))
        return cls(
            quality=recipe.sd_quality * z[0],
            bias=recipe.sd_bias * z[1],
            log_noise=recipe.sd_log_noise * z[2],
            log_confidence=math.log(recipe.kappa0) + recipe.sd_log_confidence * z[3],
            extra_noise=np.zeros(m),
            gamma=np.ones(m),
        )

    def __len__(self) -> int:
        return int(np.broadcast_shapes(*(np.shape(v) for v in dataclasses.astuple(self)))[0])

    def take(self, i: int | slice | np.ndarray) -> Seeds:
        """The seeds at ``i`` (all arrays broadcast to a common length first)."""
        m = len(self)
        return Seeds(
            *(np.broadcast_to(np.asarray(v, dtype=np.float64), (m,))[i] for v in dataclasses.astuple(self))
        )

    def perturbed(self, knob: str, value: float) -> Seeds:
        """These seeds compressed: extra noise ``value`` (``knob="noise"``) or over-confidence ``value``
        (``knob="confidence"``)."""
        if knob == "noise":
            return dataclasses.replace(
                self, extra_noise=np.full_like(self.extra_noise, value, dtype=np.float64)
            )
        if knob == "confidence":
            return dataclasses.replace(self, gamma=np.full_like(self.gamma, value, dtype=np.float64))
        raise ValueError(f"unknown knob {knob!r}")

    def noise_sd(self, recipe: Recipe) -> np.ndarray:
        """Per-example noise sd ``sqrt(sigma_s² + sigma_x²)``."""
        return np.sqrt((recipe.sigma * np.exp(self.log_noise)) ** 2 + self.extra_noise**2)

    def beta(self, recipe: Recipe) -> np.ndarray:
        """Logit slope ``gamma·beta0·exp(k_s)``."""
        return self.gamma * recipe.beta0 * np.exp(self.log_confidence)


@dataclass(frozen=True)
class Examples:
    """``n`` examples: labels ``(n,)`` int64 and the shared standardised difficulty ``z``
    (``m = mu + tau z``)."""

    labels: np.ndarray
    z: np.ndarray

    @classmethod
    def draw(cls, recipe: Recipe, rng: np.random.Generator, n: int) -> Examples:
        """``n`` examples of the task."""
        labels = (rng.random(n) < recipe.p_positive).astype(np.int64)
        return cls(labels, rng.standard_normal(n))


def model_logits(recipe: Recipe, examples: Examples, seed: Seeds, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` float32 logits of one model (``seed`` of length 1) on ``examples``, its churn drawn from
    ``rng``."""
    g = 2.0 * examples.labels - 1.0
    u = (
        recipe.mu
        + recipe.tau * examples.z
        + seed.quality[0]
        + seed.bias[0] * g
        + seed.noise_sd(recipe)[0] * rng.standard_normal(examples.z.shape[0])
    )
    half = 0.5 * g * seed.beta(recipe)[0] * u
    return np.stack([-half, half], axis=1).astype(np.float32)


def model_outputs(name: str, logits: np.ndarray, labels: np.ndarray) -> ModelOutputs:
    """The ``ModelOutputs`` the characteristics take (example ids ``0 .. n-1``)."""
    n = labels.shape[0]
    return ModelOutputs(
        name,
        example_ids=torch.arange(n),
        logits=torch.from_numpy(np.ascontiguousarray(logits)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        label_names=("a", "b"),
    )


# ----------------------------------------------------------------------------------- population values

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)
#: trapezoid rules over a standard normal: for these analytic integrands (normal probabilities, sigmoids) the
#: rule converges geometrically; both agree with 6,401 points on [-8, 8] to 1e-7 even for twice the seed-level
#: spreads (Gauss-Hermite needs far more nodes for the steep sigmoid of an over-confident seed).
_Z_GRID = np.linspace(-8.0, 8.0, 401)
_Z_WEIGHTS = np.exp(-0.5 * _Z_GRID**2) / math.sqrt(2 * math.pi) * (_Z_GRID[1] - _Z_GRID[0])
_PAIR_GRID = np.linspace(-7.0, 7.0, 97)
_PAIR_WEIGHTS = np.exp(-0.5 * _PAIR_GRID**2) / math.sqrt(2 * math.pi) * (_PAIR_GRID[1] - _PAIR_GRID[0])


def _class_means(recipe: Recipe, seeds: Seeds) -> list[tuple[float, np.ndarray]]:
    """``[(P(class), mean of u in it (M,))]`` for the positive and the negative class."""
    base = recipe.mu + seeds.quality
    return [(recipe.p_positive, base + seeds.bias), (1.0 - recipe.p_positive, base - seeds.bias)]


def model_population(
    recipe: Recipe, seeds: Seeds, fields: Sequence[str] = ("accuracy", "ece", "brier", "nll")
) -> dict[str, np.ndarray]:
    """Population accuracy, ECE (10 equal-width bins of the top-label confidence), multiclass Brier and NLL
    of each seed (``(M,)`` arrays; only ``fields``), by quadrature over
    ``u ~ N(mean_class, tau² + sigma_s²)``.

    ECE: bin ``b`` holds the ``u`` with ``sigmoid(beta|u|)`` in ``(e_b, e_{b+1}]`` (confidence >= 0.5, so bins
    5-9), i.e. ``|u|`` in ``(t_b, t_{b+1}]``; its gap ``P(u in it, u > 0) - E[conf; |u| in it]`` is a normal
    probability minus a 32-node Gauss-Legendre integral. Brier and NLL: the trapezoid rule of ``_Z_GRID``.
    """
    s = np.sqrt(recipe.tau**2 + seeds.noise_sd(recipe) ** 2)[:, None]
    beta = seeds.beta(recipe)[:, None]
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    lo_conf, hi_conf = edges[N_BINS // 2 : -1], edges[N_BINS // 2 + 1 :]
    out: dict[str, Any] = dict.fromkeys(fields, 0.0)
    gaps: Any = 0.0
    for p_class, mean in _class_means(recipe, seeds):
        mean = mean[:, None]
        if "accuracy" in out:
            out["accuracy"] = out["accuracy"] + p_class * ndtr(mean[:, 0] / s[:, 0])
        if "brier" in out or "nll" in out:
            u = beta * (mean + s * _Z_GRID[None, :])
            if "brier" in out:
                out["brier"] = out["brier"] + p_class * (2.0 * (1.0 - expit(u)) ** 2) @ _Z_WEIGHTS
            if "nll" in out:
                out["nll"] = out["nll"] + p_class * np.logaddexp(0.0, -u) @ _Z_WEIGHTS
        if "ece" not in out:
            continue
        t_lo = np.log(lo_conf / (1 - lo_conf))[None, :] / beta  # (M, 5)
        with np.errstate(divide="ignore"):
            t_hi = np.log(hi_conf / (1 - hi_conf))[None, :] / beta
        cap = np.abs(mean) + 12.0 * s
        t_hi = np.where(np.isfinite(t_hi), t_hi, np.maximum(cap, t_lo + 1.0))
        correct = ndtr((t_hi - mean) / s) - ndtr((t_lo - mean) / s)
        half = 0.5 * (t_hi - t_lo)
        t = (t_lo + half)[..., None] + half[..., None] * _GL_NODES  # (M, 5, nodes)
        m3, s3 = mean[..., None], s[..., None]
        dens = (np.exp(-0.5 * ((t - m3) / s3) ** 2) + np.exp(-0.5 * ((t + m3) / s3) ** 2)) / (
            s3 * math.sqrt(2 * math.pi)
        )
        conf = (expit(beta[..., None] * t) * dens) @ _GL_WEIGHTS * half
        gaps = gaps + p_class * (correct - conf)
    if "ece" in out:
        out["ece"] = np.abs(gaps).sum(axis=1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def pair_errors(recipe: Recipe, a: Seeds, b: Seeds) -> dict[str, np.ndarray]:
    """Population error Jaccard, flip rate and agreement of each pair ``(a[j], b[j])``: the models share the
    difficulty, so ``P(both wrong | class) = E_z[Phi(-(m + A)/sigma_a) Phi(-(m + B)/sigma_b)]`` (trapezoid
    over ``z`` in [-7, 7], 97 points)."""
    both = wrong_a = wrong_b = 0.0
    sa, sb = a.noise_sd(recipe)[:, None], b.noise_sd(recipe)[:, None]
    m = recipe.tau * _PAIR_GRID[None, :]
    for (p_class, mean_a), (_, mean_b) in zip(_class_means(recipe, a), _class_means(recipe, b), strict=True):
        pa, pb = ndtr(-(m + mean_a[:, None]) / sa), ndtr(-(m + mean_b[:, None]) / sb)
        both = both + p_class * (pa * pb) @ _PAIR_WEIGHTS
        wrong_a = wrong_a + p_class * ndtr(-mean_a / np.sqrt(recipe.tau**2 + sa[:, 0] ** 2))
        wrong_b = wrong_b + p_class * ndtr(-mean_b / np.sqrt(recipe.tau**2 + sb[:, 0] ** 2))
    flip = wrong_a + wrong_b - 2.0 * both
    return {"error_jaccard": both / (wrong_a + wrong_b - both), "flip_rate": flip, "agreement": 1.0 - flip}


def pair_population(
    recipe: Recipe,
    stat: Statistic,
    ref: Seeds,
    other: Seeds,
    ref_values: Mapping[str, np.ndarray] | None = None,
    other_values: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Population value of ``stat`` for each pair ``(ref[j], other[j])`` (broadcast). Calibration statistics
    are differences of per-model values (``other - ref``; absolute for the ``abs_`` ones), which may be
    passed precomputed (:func:`model_population`)."""
    if stat.key.startswith("errors/"):
        m = max(len(ref), len(other))
        return pair_errors(recipe, ref.take(np.arange(m) % len(ref)), other.take(np.arange(m) % len(other)))[
            stat.name
        ]
    base = {"ece_uniform_diff": "ece", "brier_diff": "brier", "nll_diff": "nll"}
    name = stat.name.removeprefix("abs_")
    field_ = base[name]
    r = (ref_values or model_population(recipe, ref, (field_,)))[field_]
    o = (other_values or model_population(recipe, other, (field_,)))[field_]
    d = o - r
    return np.abs(d) if stat.name.startswith("abs_") else d


def _shortfall(alike: str, floor: np.ndarray | float, cand: np.ndarray | float) -> np.ndarray:
    return np.asarray(floor) - np.asarray(cand) if alike == "higher" else np.asarray(cand) - np.asarray(floor)


# ------------------------------------------------------------------------------------- population truth


@dataclass(frozen=True)
class Truths:
    """The candidates' perturbations and what they achieve.

    Attributes:
        knobs: ``(statistic key, level) -> sigma_x or gamma`` giving a population shortfall of
            ``level x margin`` (level 0: no perturbation).
        achieved: ``(population shortfall, its Monte Carlo standard error)`` each achieves, re-estimated on
            independent seed draws.
        absolute: ``statistic key -> sigma_x`` giving a population value at the absolute threshold;
            absolute_achieved: the value it achieves, on independent draws.
        floor: ``statistic key -> (E S(ref, replica), sd over seed pairs)`` of the population values.
        n_seeds: seed draws behind each expectation.
    """

    knobs: Mapping[tuple[str, float], float]
    achieved: Mapping[tuple[str, float], tuple[float, float]]
    absolute: Mapping[str, float]
    absolute_achieved: Mapping[str, float]
    floor: Mapping[str, tuple[float, float]]
    n_seeds: int


class _Population:
    """Expectations over seed pairs ``(ref_j, other_j)`` (common random numbers: the same draws for the floor
    and every perturbation, so that a shortfall is a smooth function of the perturbation)."""

    def __init__(self, recipe: Recipe, n_seeds: int, seed: Sequence[int]) -> None:
        rng = np.random.default_rng(list(seed))
        self.recipe = recipe
        self.ref, self.other = Seeds.draw(recipe, rng, n_seeds), Seeds.draw(recipe, rng, n_seeds)
        self.ref_values = model_population(recipe, self.ref)
        self.other_values = model_population(recipe, self.other)
        self._floor: dict[str, np.ndarray] = {}

    def floor(self, stat: Statistic) -> np.ndarray:
        """``S(ref_j, other_j)`` per pair (cached)."""
        if stat.key not in self._floor:
            self._floor[stat.key] = pair_population(
                self.recipe, stat, self.ref, self.other, self.ref_values, self.other_values
            )
        return self._floor[stat.key]

    def candidate(self, stat: Statistic, value: float) -> np.ndarray:
        """``S(ref_j, other_j perturbed by value)`` per pair."""
        other = self.other.perturbed(stat.knob, value)
        return pair_population(self.recipe, stat, self.ref, other, self.ref_values)

    def shortfall(self, stat: Statistic, value: float) -> float:
        """The population shortfall of a candidate perturbed by ``value``."""
        return float(np.mean(self.shortfalls(stat, value)))

    def shortfalls(self, stat: Statistic, value: float) -> np.ndarray:
        """Its shortfall per seed pair (their mean is the population shortfall)."""
        return _shortfall(stat.alike, self.floor(stat), self.candidate(stat, value))


def _solve(f: Any, target: float, lo: float, step: float) -> float:
    """The ``x >= lo`` with ``f(x) = target`` for ``f`` increasing from ``f(lo) <= target``: bracketed by
    doubling, then Brent's method (bisection safeguarded by inverse interpolation) to ``1e-6``."""
    hi = lo + step
    while f(hi) < target:
        lo, hi = hi, lo + 2 * (hi - lo)
        if hi > 1e3:
            raise RuntimeError("no perturbation reaches the target")
    return float(brentq(lambda x: f(x) - target, lo, hi, xtol=1e-6))


#: statistics whose shortfall is another's exactly (binary task: agreement = 1 - flip rate), so that their
#: perturbation is that one's.
_MIRRORS = {"errors/agreement": "errors/flip_rate"}


def tune(
    recipe: Recipe,
    keys: Sequence[str] = tuple(STATISTICS),
    levels: Sequence[float] = LEVELS,
    absolute: Sequence[str] = tuple(ABSOLUTE),
    n_seeds: int = 20000,
    seed: int = 0,
) -> Truths:
    """Find each candidate perturbation by bisection on the population shortfall (or, for ``absolute``, on the
    population value against its threshold), then re-estimate what it achieves on independent draws."""
    fit, check = _Population(recipe, n_seeds, [seed, 7]), _Population(recipe, n_seeds, [seed, 8])
    knobs: dict[tuple[str, float], float] = {}
    achieved: dict[tuple[str, float], tuple[float, float]] = {}
    for key in keys:
        stat = STATISTICS[key]
        lo, step = (0.0, 0.1) if stat.knob == "noise" else (1.0, 0.1)
        mirror = _MIRRORS.get(key)
        for level in levels:
            if mirror in keys and STATISTICS[mirror].margin == stat.margin and (mirror, level) in knobs:
                knobs[key, level] = knobs[mirror, level]
            elif level == 0:
                knobs[key, level] = lo
            else:
                knobs[key, level] = _solve(partial(fit.shortfall, stat), level * stat.margin, lo, step)
            per_pair = check.shortfalls(stat, knobs[key, level])
            achieved[key, level] = (float(np.mean(per_pair)), float(np.std(per_pair) / math.sqrt(n_seeds)))
    abs_knobs: dict[str, float] = {}
    abs_achieved: dict[str, float] = {}
    for key in absolute:
        stat, threshold = STATISTICS[key], ABSOLUTE[key]
        sign = -1.0 if stat.alike == "higher" else 1.0  # the value moves away from alike with the noise

        def value_at(x: float, stat: Statistic = stat, sign: float = sign) -> float:
            return sign * float(np.mean(fit.candidate(stat, x)))

        abs_knobs[key] = _solve(value_at, sign * threshold, 0.0, 0.1)
        abs_achieved[key] = float(np.mean(check.candidate(stat, abs_knobs[key])))
    floor = {
        k: (float(np.mean(check.floor(STATISTICS[k]))), float(np.std(check.floor(STATISTICS[k]))))
        for k in keys
    }
    return Truths(knobs, achieved, abs_knobs, abs_achieved, floor, n_seeds)


# ------------------------------------------------------------------------------------ conditional truth


class ReplicaBank:
    """A fixed set of replica seeds: the conditional truth's expectation over replicas. Per-model
    (calibration) values are cheap, so they average all ``size`` draws; the errors statistics need a
    quadrature per pair and average the first ``pair_size``. Their Monte Carlo errors (seed sd /
    sqrt(draws)), shared by every repetition: about 4e-4 for the error Jaccard, 1.4e-4 for the flip rate,
    2e-4 for ECE and 3e-4 for NLL with the defaults."""

    def __init__(self, recipe: Recipe, size: int = 20000, pair_size: int = 2000, seed: int = 0) -> None:
        self.recipe = recipe
        self.seeds = Seeds.draw(recipe, np.random.default_rng([seed, 9]), size)
        self.pair_seeds = self.seeds.take(slice(0, min(pair_size, size)))
        self.values = model_population(recipe, self.seeds)

    def floor(self, stat: Statistic, ref: Seeds, ref_values: Mapping[str, np.ndarray]) -> float:
        """``E_replica S(ref, replica)`` for one reference (``ref`` of length 1)."""
        if stat.key.startswith("errors/"):
            m = len(self.pair_seeds)
            pairs = pair_errors(self.recipe, ref.take(np.zeros(m, dtype=int)), self.pair_seeds)
            return float(np.mean(pairs[stat.name]))
        return float(np.mean(pair_population(self.recipe, stat, ref, self.seeds, ref_values, self.values)))


def conditional_truths(
    recipe: Recipe, truths: Truths, bank: ReplicaBank, ref: Seeds, cand: Seeds
) -> tuple[dict[tuple[str, float], float], dict[str, float]]:
    """For one repetition (``ref`` and the candidate's base seed ``cand``, each of length 1): the conditional
    shortfall of every tuned candidate, ``(key, level) -> shortfall``, and the population value of every
    absolute-path candidate, ``key -> value`` (expectations over examples exact, over replicas the bank's)."""
    ref_values = model_population(recipe, ref)
    floors: dict[str, float] = {}
    shortfalls: dict[tuple[str, float], float] = {}
    for (key, level), value in truths.knobs.items():
        stat = STATISTICS[key]
        if key not in floors:
            floors[key] = bank.floor(stat, ref, ref_values)
        s = float(pair_population(recipe, stat, ref, cand.perturbed(stat.knob, value), ref_values)[0])
        shortfalls[key, level] = float(_shortfall(stat.alike, floors[key], s))
    values = {
        key: float(pair_population(recipe, STATISTICS[key], ref, cand.perturbed("noise", value))[0])
        for key, value in truths.absolute.items()
    }
    return shortfalls, values


# ----------------------------------------------------------------------------------------- repetitions


@dataclass(frozen=True)
class Plan:
    """What one run simulates (everything a worker needs)."""

    recipe: Recipe
    truths: Truths
    n_bootstrap: int
    seed: int
    sizes: tuple[int, ...] = SIZES
    replicas: tuple[int, ...] = REPLICAS
    small_sizes: tuple[int, ...] = SMALL_SIZES
    bank_size: int = 20000


def _head(stat: PairStatistic, n: int) -> PairStatistic:
    """The statistic on its first ``n`` rows (ids ``0 .. n-1``, in order), force-judged: also those the
    verdict reports without a decision (|ΔECE|; calibration's signed differences against one replica), so
    the tables show why."""
    return dataclasses.replace(
        stat,
        example_ids=stat.example_ids[:n],
        arrays=tuple(a[:n] for a in stat.arrays),
        judged=True,
        min_replicas=1,
    )


def _pair_statistics(
    ref: ModelOutputs, other: ModelOutputs, which: Sequence[str]
) -> dict[str, PairStatistic]:
    """``"<characteristic>/<name>" -> PairStatistic`` from the real characteristics (``which``: their
    names)."""
    out: dict[str, PairStatistic] = {}
    if "errors" in which:
        out.update({f"errors/{s.name}": s for s in ErrorsCharacteristic().pair_statistics(ref, other)})
    if "calibration" in which:
        cal = CalibrationCharacteristic(n_bins=N_BINS).pair_statistics(ref, other)
        out.update({f"calibration/{s.name}": s for s in cal})
    return out


_BANKS: dict[tuple[Recipe, int, int], ReplicaBank] = {}


def _bank(plan: Plan) -> ReplicaBank:
    key = (plan.recipe, plan.bank_size, plan.seed)
    if key not in _BANKS:
        _BANKS[key] = ReplicaBank(plan.recipe, size=plan.bank_size, seed=plan.seed)
    return _BANKS[key]


def run_repetition(plan: Plan, rep: int) -> dict[str, Any]:
    """One repetition: draw the examples, the reference, ``max(replicas)`` replicas and the candidates, judge
    every scenario with the real verdict, and compute the conditional truths.

    Returns:
        ``{"main": [(procedure, key, level, n, k, decision)], "absolute": [(key, n, decision)],
        "small": [(key, n, decision)], "conditional": {(key, level): shortfall},
        "conditional_absolute": {key: value}, "floor": {name: value of (reference, first replica) at the
        largest n}}``; decisions as strings.
    """
    torch.set_num_threads(1)  # tensors of a few thousand rows: threads only contend
    recipe, truths = plan.recipe, plan.truths
    rng = np.random.default_rng([plan.seed, rep])
    n_max = max((*plan.sizes, *plan.small_sizes))
    k_max = max(plan.replicas)
    examples = Examples.draw(recipe, rng, n_max)
    seeds = Seeds.draw(recipe, rng, 2 + k_max)
    ref_seed, cand_seed = seeds.take(slice(0, 1)), seeds.take(slice(1, 2))
    churn = rng.integers(2**62, size=2 + k_max)  # each model's per-example noise stream

    def outputs(name: str, seed: Seeds, stream: int) -> ModelOutputs:
        logits = model_logits(recipe, examples, seed, np.random.default_rng(int(stream)))
        return model_outputs(name, logits, examples.labels)

    ref = outputs("reference", ref_seed, churn[0])
    replicas = [outputs(f"replica{j}", seeds.take(slice(2 + j, 3 + j)), churn[2 + j]) for j in range(k_max)]
    floor_stats = [_pair_statistics(ref, r, ("errors", "calibration")) for r in replicas]
    base = _pair_statistics(ref, outputs("candidate", cand_seed, churn[1]), ("errors", "calibration"))
    # the candidates share their base seed and churn (common random numbers across levels); a perturbation
    # shared by two statistics (flip rate and agreement) is made once
    made: dict[tuple[str, float, str], dict[str, PairStatistic]] = {}

    def candidate(knob: str, value: float, characteristic: str) -> dict[str, PairStatistic]:
        if (knob, value, characteristic) not in made:
            other = outputs("candidate", cand_seed.perturbed(knob, value), churn[1])
            made[knob, value, characteristic] = _pair_statistics(ref, other, (characteristic,))
        return made[knob, value, characteristic]

    cands: dict[tuple[str, float], PairStatistic] = {}
    for (key, level), value in truths.knobs.items():
        stat = STATISTICS[key]
        cands[key, level] = base[key] if level == 0 else candidate(stat.knob, value, key.split("/")[0])[key]
    abs_cands = {key: candidate("noise", v, "errors")[key] for key, v in truths.absolute.items()}

    settings = {p: verdict_settings(p, plan.n_bootstrap, rep) for p in PROCEDURES}
    main, absolute, small = [], [], []
    for procedure, keys in PROCEDURES.items():
        for key in keys:
            for level in LEVELS:
                if (key, level) not in cands:
                    continue
                for n in plan.sizes:
                    cand = _head(cands[key, level], n)
                    for k in plan.replicas:
                        floor = {f"replica{j}": _head(floor_stats[j][key], n) for j in range(k)}
                        entry, _ = judge_statistic(key, cand, floor, settings[procedure])
                        main.append((procedure, key, level, n, k, entry["decision"]))
    for key, stat in abs_cands.items():
        for n in plan.sizes:
            entry, _ = judge_statistic(key, _head(stat, n), {}, settings["new"])
            absolute.append((key, n, entry["decision"]))
    for key in PROCEDURES["new"]:
        if (key, 1.0) not in cands:
            continue
        for n in plan.small_sizes:
            floor = {f"replica{j}": _head(floor_stats[j][key], n) for j in range(k_max)}
            entry, _ = judge_statistic(key, _head(cands[key, 1.0], n), floor, settings["new"])
            small.append((key, n, entry["decision"]))
    conditional, conditional_absolute = conditional_truths(recipe, truths, _bank(plan), ref_seed, cand_seed)
    first = floor_stats[0]
    cal = CalibrationCharacteristic(n_bins=N_BINS, strategies=("uniform",))
    floor_values = {
        name: first[key].estimate()
        for name, key in (
            ("error_jaccard", "errors/error_jaccard"),
            ("flip_rate", "errors/flip_rate"),
            ("abs_ece_uniform_diff", "calibration/abs_ece_uniform_diff"),
            ("abs_brier_diff", "calibration/abs_brier_diff"),
        )
    }
    for who, out in (("reference", ref), ("replica", replicas[0])):
        metrics = cal.per_model(out).metrics
        floor_values[f"accuracy_{who}"] = metrics[f"{out.name}/accuracy"]
        floor_values[f"ece_{who}"] = metrics[f"{out.name}/ece_uniform"]
    return {
        "main": main,
        "absolute": absolute,
        "small": small,
        "conditional": conditional,
        "conditional_absolute": conditional_absolute,
        "floor": floor_values,
    }


def run(plan: Plan, reps: int, workers: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """All repetitions, in order (``workers`` > 1: a process pool; the results do not depend on it);
    ``progress``: a line on stderr every 10 repetitions."""
    job = partial(run_repetition, plan)
    start, results = time.perf_counter(), []
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        for result in pool.imap(job, range(reps)):
            results.append(result)
            if progress and (len(results) % 10 == 0 or len(results) == reps):
                elapsed = time.perf_counter() - start
                print(f"  {len(results)}/{reps} repetitions, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return results


class _Serial:
    """A stand-in for a process pool that runs in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn: Any, items: Any) -> Any:
        return map(fn, items)


# ----------------------------------------------------------------------------------------------- tables


def wilson(count: int, total: int) -> tuple[float, float, float]:
    """``(rate, low, high)``: the rate and its Wilson score 95% interval (NaN when ``total`` is 0)."""
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    ci = binomtest(int(count), int(total)).proportion_ci(0.95, method="wilson")
    return count / total, float(ci.low), float(ci.high)


def _pct(count: int, total: int, interval: bool = True) -> str:
    if total == 0:
        return "–"
    p, lo, hi = wilson(count, total)
    return f"{100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if interval else f"{100 * p:.1f}%"


def _short(key: str) -> str:
    return key.split("/", 1)[1]


def _level(level: float) -> str:
    return {0.0: "0", 1.0: "margin", 2.0: "2x margin"}.get(level, f"{level:g}x")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def tables(plan: Plan, results: Sequence[Mapping[str, Any]], seconds: float, argv: Sequence[str]) -> str:
    """The markdown report of a run: generator and floor, the main table, the summaries, the absolute path,
    small n and the suggested minimum."""
    truths, recipe = plan.truths, plan.recipe
    reps = len(results)
    out: list[str] = [
        "# Operating characteristics of the verdict",
        "",
        f"`python benchmarks/verdict_operating.py{''.join(' ' + a for a in argv)}`: {reps} repetitions, "
        f"{plan.n_bootstrap} bootstrap resamples, seed {plan.seed}, {seconds / 60:.1f} min. What is "
        "simulated and what the truths are: the docstring of `benchmarks/verdict_operating.py`. Rates are "
        "over repetitions, with Wilson 95% intervals.",
        "",
        "## Generator",
        "",
        "Parameters: "
        + ", ".join(f"{f.name} = {getattr(recipe, f.name):.4g}" for f in dataclasses.fields(recipe))
        + f" (beta0 = {recipe.beta0:.4g}).",
        "",
    ]
    floor_mean = {k: float(np.mean([r["floor"][k] for r in results])) for k in results[0]["floor"]}
    floor_sd = {k: float(np.std([r["floor"][k] for r in results])) for k in results[0]["floor"]}
    mrpc = {
        "accuracy_reference": 0.7925,
        "accuracy_replica": 0.772,
        "error_jaccard": 0.694,
        "flip_rate": 0.079,
        "ece_reference": 0.040,
        "ece_replica": 0.074,
        "abs_ece_uniform_diff": 0.034,
        "abs_brier_diff": 0.024,
    }
    n_max = max(plan.sizes)
    out += [
        f"Reference vs first replica at n = {n_max:,} (mean ± sd over repetitions) against MRPC's measured "
        "floor:",
        "",
    ]
    out += _markdown(
        ["quantity", "simulated", "MRPC (MiniLM, seed 0 vs seed 1)"],
        [(k, f"{floor_mean[k]:.4f} ± {floor_sd[k]:.4f}", f"{mrpc[k]:.4f}") for k in mrpc if k in floor_mean],
    )
    out += [
        "",
        f"Population floor E S(ref, replica) and its seed-to-seed sd (n -> infinity, {truths.n_seeds:,} seed "
        "pairs): the sd is the part of the floor's variation a bootstrap over examples cannot see.",
        "",
    ]
    out += _markdown(
        ["statistic", "E floor", "sd over seed pairs"],
        [(_short(k), f"{m:.4f}", f"{s:.4f}") for k, (m, s) in truths.floor.items()],
    )
    out += [
        "",
        "Candidate perturbations (bisection on the population shortfall; achieved = re-estimated on "
        "independent draws, ± its Monte Carlo standard error):",
        "",
    ]
    rows = []
    for (key, level), value in truths.knobs.items():
        if level == 0:
            continue
        knob = "sigma_x" if STATISTICS[key].knob == "noise" else "gamma"
        target = level * STATISTICS[key].margin
        rows.append(
            (
                _short(key),
                _level(level),
                f"{knob} = {value:.4f}",
                f"{target:.4f}",
                "{:.4f} ± {:.4f}".format(*truths.achieved[key, level]),
            )
        )
    for key, value in truths.absolute.items():
        rows.append(
            (
                _short(key),
                f"absolute {ABSOLUTE[key]:g}",
                f"sigma_x = {value:.4f}",
                f"value {ABSOLUTE[key]:.4f}",
                f"value {truths.absolute_achieved[key]:.4f}",
            )
        )
    out += _markdown(["statistic", "shortfall", "perturbation", "target", "achieved"], rows)

    # ------------------------------------------------------------------ main
    counts: dict[tuple, dict[str, int]] = {}
    cond_counts: dict[tuple, list[int]] = {}  # [eq & cond>=m, cond>=m, not & cond<=0, cond<=0]
    for r in results:
        for procedure, key, level, n, k, decision in r["main"]:
            c = counts.setdefault((procedure, key, level, n, k), dict.fromkeys(DECISIONS, 0))
            c[decision] += 1
            cs = r["conditional"][key, level]
            cc = cond_counts.setdefault((procedure, key, level, n, k), [0, 0, 0, 0])
            margin = STATISTICS[key].margin
            if cs >= margin:
                cc[0] += decision == "equivalent"
                cc[1] += 1
            if cs <= 0:
                cc[2] += decision == "not_equivalent"
                cc[3] += 1
    cond_stats = {
        (key, level): (
            float(np.mean([r["conditional"][key, level] for r in results])),
            float(np.std([r["conditional"][key, level] for r in results])),
        )
        for key, level in truths.knobs
    }

    def summary(level: float, decision: str, title: str, conditional: int | None = None) -> list[str]:
        """A table statistic x procedure by (n, k): the rate of ``decision`` at ``level``, or with
        ``conditional`` (0: cond >= margin, 2: cond <= 0) its rate among the repetitions so conditioned."""
        cols = [(n, k) for n in plan.sizes for k in plan.replicas]
        rows = []
        for procedure, keys in PROCEDURES.items():
            for key in keys:
                cells = []
                for n, k in cols:
                    c = counts.get((procedure, key, level, n, k))
                    if not c:
                        cells.append("–")
                    elif conditional is None:
                        cells.append(_pct(c[decision], sum(c.values())))
                    else:
                        cc = cond_counts[procedure, key, level, n, k]
                        cells.append(
                            f"{_pct(cc[conditional], cc[conditional + 1])} (m={cc[conditional + 1]})"
                        )
                rows.append((_short(key), procedure, *cells))
        return [
            title,
            "",
            *_markdown(["statistic", "procedure", *(f"n={n:,} k={k}" for n, k in cols)], rows),
            "",
        ]

    out += [""]
    out += summary(
        1.0, "equivalent", "## Equivalent at shortfall = margin (population truth; nominal <= 2.5%)"
    )
    out += summary(
        1.0,
        "equivalent",
        "## Equivalent at shortfall = margin, among repetitions whose conditional shortfall is >= margin "
        "(nominal <= 2.5%)",
        conditional=0,
    )
    out += summary(2.0, "equivalent", "## Equivalent at shortfall = 2x margin (population truth)")
    out += summary(0.0, "equivalent", "## Equivalent at shortfall = 0 (power)")
    out += summary(
        0.0, "not_equivalent", "## Not equivalent at shortfall = 0 (population truth; nominal <= 2.5%)"
    )
    out += summary(
        0.0,
        "not_equivalent",
        "## Not equivalent at shortfall = 0, among repetitions whose conditional shortfall is <= 0 "
        "(nominal <= 2.5%)",
        conditional=2,
    )
    out += [
        "## Full table",
        "",
        "Against the population truth: the rate of each decision. Against the conditional truth (this "
        "reference and this candidate, expectation over examples and replica seeds): its mean ± sd over "
        "repetitions, "
        "P(equivalent | conditional shortfall >= margin) and P(not_equivalent | conditional shortfall <= 0), "
        "each over the m repetitions where the condition holds (nominal <= 2.5% each).",
        "",
    ]
    rows = []
    for procedure, keys in PROCEDURES.items():
        for key in keys:
            for level in LEVELS:
                for n in plan.sizes:
                    for k in plan.replicas:
                        c = counts.get((procedure, key, level, n, k))
                        if not c:
                            continue
                        total = sum(c.values())
                        cc = cond_counts[procedure, key, level, n, k]
                        cm, csd = cond_stats[key, level]
                        rows.append(
                            (
                                _short(key),
                                procedure,
                                _level(level),
                                f"{n:,}",
                                k,
                                _pct(c["equivalent"], total),
                                _pct(c["not_equivalent"], total),
                                _pct(c["inconclusive"], total, interval=False),
                                f"{cm:+.4f} ± {csd:.4f}",
                                f"{_pct(cc[0], cc[1])} (m={cc[1]})",
                                f"{_pct(cc[2], cc[3])} (m={cc[3]})",
                            )
                        )
    out += _markdown(
        [
            "statistic",
            "procedure",
            "shortfall",
            "n",
            "k",
            "equivalent",
            "not_equivalent",
            "inconclusive",
            "cond. shortfall",
            "P(eq ∣ cond >= margin)",
            "P(not ∣ cond <= 0)",
        ],
        rows,
    )

    # ------------------------------------------------------------------ absolute
    out += [
        "",
        "## Absolute path (no floor)",
        "",
        "Candidates whose population value is the threshold; nominal rate of equivalent <= 5% (one-sided at "
        "alpha = 1 - confidence). Conditional: P(equivalent | this candidate's population value is on the "
        "wrong side of the threshold or on it).",
        "",
    ]
    rows = []
    for key in truths.absolute:
        for n in plan.sizes:
            ds = [
                (d, r["conditional_absolute"][key])
                for r in results
                for kk, nn, d in r["absolute"]
                if kk == key and nn == n
            ]
            eq = sum(d == "equivalent" for d, _ in ds)
            wrong = [
                d
                for d, v in ds
                if (v <= ABSOLUTE[key] if STATISTICS[key].alike == "higher" else v >= ABSOLUTE[key])
            ]
            rows.append(
                (
                    _short(key),
                    f"{ABSOLUTE[key]:g}",
                    f"{n:,}",
                    _pct(eq, len(ds)),
                    _pct(sum(d == "not_equivalent" for d, _ in ds), len(ds)),
                    f"{_pct(sum(d == 'equivalent' for d in wrong), len(wrong))} (m={len(wrong)})",
                )
            )
    out += _markdown(
        ["statistic", "threshold", "n", "equivalent", "not_equivalent", "P(eq ∣ cond wrong side)"], rows
    )

    # ------------------------------------------------------------------ small n
    k_max = max(plan.replicas)
    rates = small_n_rates(plan, results)
    keys = sorted({k for k, _ in rates}, key=list(STATISTICS).index)
    sizes = sorted({n for _, n in rates})
    out += [
        "",
        f"## Small n: shortfall = margin, k = {k_max}, new procedure, no minimum of examples",
        "",
        "P(equivalent) against the population truth:",
        "",
    ]
    out += _markdown(
        ["n", *(_short(k) for k in keys)],
        [(f"{n:,}", *(_pct(*rates[k, n][:2]) for k in keys)) for n in sizes],
    )
    out += ["", "P(equivalent | conditional shortfall >= margin), over the m repetitions where it is:", ""]
    out += _markdown(
        ["n", *(_short(k) for k in keys)],
        [(f"{n:,}", *(f"{_pct(*rates[k, n][2:])} (m={rates[k, n][3]})" for k in keys)) for n in sizes],
    )
    errors = [k for k in keys if k.startswith("errors/")]

    def said(n: int | None) -> str:
        return "none of these" if n is None else f"{n:,}"

    out += [
        "",
        "Smallest n from which on (at it and every larger n) the rate of equivalent at the margin is <= 4% "
        "(2.5% + 1.5 points, point estimates):",
        "",
        f"- every statistic, population truth: {said(minimum_examples(rates, keys))};",
        f"- the errors statistics, population truth: {said(minimum_examples(rates, errors))};",
        f"- every statistic, conditional truth: {said(minimum_examples(rates, keys, conditional=True))}.",
        "",
    ]
    return "\n".join(out)


def small_n_rates(
    plan: Plan, results: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """At shortfall = margin, k = max(replicas), the new procedure, per statistic and n (the small sizes and
    the main table's): ``(equivalent, repetitions, equivalent with conditional shortfall >= margin,
    repetitions with conditional shortfall >= margin)``."""
    k_max = max(plan.replicas)
    out: dict[tuple[str, int], tuple[int, int, int, int]] = {}
    keys = [k for k in PROCEDURES["new"] if (k, 1.0) in plan.truths.knobs]
    for key in keys:
        margin = STATISTICS[key].margin
        for n in sorted(set(plan.small_sizes) | set(plan.sizes)):
            ds = []
            for r in results:
                if n in plan.small_sizes:
                    found = [d for kk, nn, d in r["small"] if kk == key and nn == n]
                else:
                    found = [
                        d
                        for p, kk, lv, nn, k, d in r["main"]
                        if (p, kk, lv, nn, k) == ("new", key, 1.0, n, k_max)
                    ]
                ds += [(d, r["conditional"][key, 1.0] >= margin) for d in found]
            eq = sum(d == "equivalent" for d, _ in ds)
            eq_cond = sum(d == "equivalent" and c for d, c in ds)
            out[key, n] = (eq, len(ds), eq_cond, sum(c for _, c in ds))
    return out


def minimum_examples(
    rates: Mapping[tuple[str, int], tuple[int, int, int, int]],
    keys: Sequence[str],
    conditional: bool = False,
    limit: float = 0.04,
) -> int | None:
    """The smallest n of ``rates`` (:func:`small_n_rates`) from which on every statistic of ``keys`` says
    equivalent at the margin at most ``limit`` of the time (``conditional``: of the repetitions whose
    conditional shortfall is >= margin), at that n and every larger one; None if no n qualifies."""
    sizes = sorted({n for _, n in rates})

    def ok(n: int) -> bool:
        for key in keys:
            eq, total = rates[key, n][2:] if conditional else rates[key, n][:2]
            if total == 0 or eq / total > limit:
                return False
        return True

    good = [ok(n) for n in sizes]
    return next((n for i, n in enumerate(sizes) if all(good[i:])), None)


# -------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, tune the candidates, run the repetitions, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 250; --quick: 16)")
    parser.add_argument("--n-bootstrap", type=int, default=None, help="resamples (default 400; --quick: 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--out", type=Path, default=Path("docs/verdict_operating.md"), help="markdown file")
    parser.add_argument("--workers", type=int, default=1, help="processes (results do not depend on it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tune-seeds", type=int, default=None, help="seed draws per expectation (20000; --quick: 3000)"
    )
    parser.add_argument("--seed-scale", type=float, default=1.0, help="multiply every seed-level spread")
    args = parser.parse_args(argv)
    reps = args.reps if args.reps is not None else (16 if args.quick else 250)
    n_boot = args.n_bootstrap if args.n_bootstrap is not None else (200 if args.quick else 400)
    n_seeds = args.tune_seeds if args.tune_seeds is not None else (3000 if args.quick else 20000)
    torch.set_num_threads(1)
    start = time.perf_counter()
    recipe = Recipe().scaled(args.seed_scale)
    truths = tune(recipe, n_seeds=n_seeds, seed=args.seed)
    print(f"tuned in {time.perf_counter() - start:.1f} s:")
    for (key, level), value in truths.knobs.items():
        got, se = truths.achieved[key, level]
        print(f"  {key} x{level:g}: {value:.4f} -> population shortfall {got:+.5f} (MC se {se:.5f})")
    for key, value in truths.absolute.items():
        print(
            f"  {key} absolute: sigma_x {value:.4f} -> population value {truths.absolute_achieved[key]:.4f}"
        )
    plan = Plan(recipe, truths, n_boot, args.seed)
    results = run(plan, reps, args.workers, progress=True)
    seconds = time.perf_counter() - start
    text = tables(plan, results, seconds, list(sys.argv[1:] if argv is None else argv))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out} ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
