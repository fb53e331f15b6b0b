"""The verdict: is each candidate equivalent to the reference, characteristic by characteristic?

Each characteristic offers its headline pair statistics in resamplable form
(:meth:`trustequiv.characteristic.Characteristic.pair_statistics`). For every candidate and statistic:

- with a noise floor (the reference fine-tuned again with other training seeds, "replicas"): the statistic of
  (reference, candidate) is set against the mean over replicas of the statistic of (reference, replica), all
  pairs resampled with the same bootstrap indices over the examples they share, and the candidate is
  judged non-inferior when its shortfall behind that floor stays within a margin
  (:func:`trustequiv.functional.equivalence.noninferiority`);
- without one: absolute margins, two one-sided tests on a signed difference (ΔECE, ΔBrier;
  :func:`~trustequiv.functional.equivalence.tost`) or a one-sided test of a similarity against a threshold
  (:func:`~trustequiv.functional.equivalence.one_sided`).

A characteristic's verdict is the worst of its statistics' decisions (not_equivalent < inconclusive <
equivalent); a candidate is equivalent overall only if every judged characteristic is. ``docs/verdict.md``
explains the decisions and justifies the default margins (``verdict:`` in ``conf/evaluate.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustequiv.characteristic import Characteristic, PairStatistic
from trustequiv.functional.bootstrap import CHUNK_ELEMENTS
from trustequiv.functional.equivalence import (
    IntervalTest,
    floor_resamples,
    joint_resamples,
    noninferiority,
    one_sided,
    percentile_interval,
    replica_counts,
    seed_deviation,
    shortfall,
    tost,
    worst,
)
from trustequiv.outputs import ModelOutputs
from trustequiv.user_errors import ConfigError

# ---------------------------------------------------------------------------------------------- settings


def _flatten(table: Any, where: str, prefix: str = "") -> dict[str, float]:
    """``{"<characteristic>/<statistic>": float}`` from flat keys, nested mappings, or both."""
    out: dict[str, float] = {}
    for k, v in (table or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) or hasattr(v, "items"):
            out.update(_flatten(v, where, f"{key}/"))
            continue
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}.{key} = {v!r} is not a number", f"set {where}.{key} to a number"
            ) from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}.{key} = {v!r} is not finite", f"set {where}.{key} to a finite number")
        out[key] = value
    return out


def _lookup(table: Mapping[str, float], key: str) -> float | None:
    """The value for ``"<char>/<stat>"``, else for ``"<char>/<last part of stat>"`` (statistics named per
    data set, e.g. ``distribution/mnli_mm/flag_kappa`` falls back on ``distribution/flag_kappa``)."""
    if key in table:
        return table[key]
    char, _, stat = key.partition("/")
    return table.get(f"{char}/{stat.rsplit('/', 1)[-1]}")


@dataclass(frozen=True)
class VerdictSettings:
    """The ``verdict:`` block of ``conf/evaluate.yaml``.

    Attributes:
        enabled: whether to judge at all.
        confidence: 1 - α; the noise-floor interval's level, and TOST's α = 1 - confidence (90% interval).
        n_bootstrap: joint bootstrap resamples (>= 1); seed: their seed.
        default_margin: the shortfall margin (and TOST margin) of a statistic with none configured.
        margins: ``"<characteristic>/<statistic>" -> margin`` on the shortfall behind the noise floor.
        absolute: without a floor: ``"<characteristic>/<statistic>" ->`` the TOST margin of a signed
            statistic, or the threshold of a similarity without sign.
        replica_resampling: with two or more replicas, each resample also draws the replicas with
            replacement (the multi-bootstrap); False: the floor is the mean over all replicas on every
            resample (examples resampled only: the floor's seed-to-seed spread is not in the interval).
        spread_correction: scale the replica draw to the unbiased spread of a mean of ``k`` replicas
            (:func:`trustequiv.functional.equivalence.floor_resamples`).
        candidate_seed_spread: answer the population question (is the candidate's *recipe*, re-run with
            another seed, equivalent?) instead of the conditional one (is *this* candidate?): each resample
            adds one drawn replica's deviation from the replicas' mean (spread-corrected) to the candidate's
            statistic, taking the candidate's seed-to-seed spread to be the reference recipe's. Needs 2+
            replicas; docs/verdict.md gives its operating characteristics.
        min_examples: fewer shared examples than this decide nothing: every decision is ``inconclusive``
            with a note (0: no minimum). The default is justified in docs/verdict.md.
    """

    enabled: bool = True
    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    default_margin: float = 0.01
    margins: Mapping[str, float] = field(default_factory=dict)
    absolute: Mapping[str, float] = field(default_factory=dict)
    replica_resampling: bool = True
    spread_correction: bool = True
    candidate_seed_spread: bool = False
    min_examples: int = 100

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> VerdictSettings:
        """Validate a config mapping (a Hydra DictConfig or a dict; missing keys take the defaults above).

        Raises:
            ConfigError: confidence not in (0.5, 1), n_bootstrap < 1, a negative margin, a non-number.
        """
        s = dict((settings or {}).items())
        unknown = set(s) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(
                f"unknown verdict setting(s) {sorted(unknown)}",
                f"use only {sorted(cls.__dataclass_fields__)} under verdict:",
            )
        out = cls(
            enabled=bool(s.get("enabled", cls.enabled)),
            confidence=float(s.get("confidence", cls.confidence)),
            n_bootstrap=int(s.get("n_bootstrap", cls.n_bootstrap)),
            seed=int(s.get("seed", cls.seed)),
            default_margin=float(s.get("default_margin", cls.default_margin)),
            margins=_flatten(s.get("margins"), "verdict.margins"),
            absolute=_flatten(s.get("absolute"), "verdict.absolute"),
            replica_resampling=bool(s.get("replica_resampling", cls.replica_resampling)),
            spread_correction=bool(s.get("spread_correction", cls.spread_correction)),
            candidate_seed_spread=bool(s.get("candidate_seed_spread", cls.candidate_seed_spread)),
            min_examples=int(s.get("min_examples", cls.min_examples)),
        )
        if out.min_examples < 0:
            raise ConfigError(
                f"verdict.min_examples = {out.min_examples} is negative", "set e.g. verdict.min_examples=100"
            )
        if not 0.5 < out.confidence < 1.0:
            raise ConfigError(
                f"verdict.confidence = {out.confidence} is outside (0.5, 1)",
                "set e.g. verdict.confidence=0.95",
            )
        if out.n_bootstrap < 1:
            raise ConfigError(
                f"verdict.n_bootstrap = {out.n_bootstrap} is < 1", "set e.g. verdict.n_bootstrap=1000"
            )
        negative = {k: v for k, v in {"default_margin": out.default_margin, **out.margins}.items() if v < 0}
        if negative or not math.isfinite(out.default_margin):
            raise ConfigError(
                f"verdict margins must be finite and >= 0, got {negative or out.default_margin}",
                "give each margin as a size of shortfall, e.g. 0.01",
            )
        return out

    def margin(self, key: str) -> float:
        """Shortfall margin of ``"<characteristic>/<statistic>"`` (:attr:`default_margin` if none)."""
        found = _lookup(self.margins, key)
        return self.default_margin if found is None else found

    def absolute_bound(self, key: str, signed: bool) -> float | None:
        """Without a floor: the TOST margin of a signed statistic (:attr:`default_margin` if none) or the
        threshold of a similarity (None if none: a similarity has no default threshold)."""
        found = _lookup(self.absolute, key)
        if found is None and signed:
            return self.default_margin
        if found is not None and signed and found < 0:
            raise ConfigError(f"verdict.absolute.{key} = {found} is a negative margin", "give a margin >= 0")
        return found


# ------------------------------------------------------------------------------------------ row alignment


def _check_statistic(key: str, stat: PairStatistic) -> np.ndarray:
    ids = np.asarray(stat.example_ids).reshape(-1)
    if any(np.asarray(a).shape[:1] != ids.shape for a in stat.arrays):
        raise ValueError(
            f"{key}: every array of a PairStatistic needs one row per example id ({ids.shape[0]})"
        )
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError(f"{key}: a PairStatistic's example ids must be unique")
    return ids


def shared_rows(
    statistics: Sequence[PairStatistic], key: str = "statistic"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The example ids every pair has, in the first pair's order, and each pair's row of each.

    Args:
        statistics: the same statistic of several pairs (candidate first, then the floor pairs).
        key: name used in error messages.

    Returns:
        ``(ids (n,), rows)``; ``rows[k]`` is an ``(n,)`` int64 index into ``statistics[k]``'s arrays.

    Raises:
        ValueError: duplicate ids, or arrays whose length differs from the ids'.
    """
    all_ids = [_check_statistic(key, s) for s in statistics]
    common = all_ids[0][np.logical_and.reduce([np.isin(all_ids[0], ids) for ids in all_ids])]
    rows = []
    for ids in all_ids:
        order = np.argsort(ids, kind="stable")
        rows.append(order[np.searchsorted(ids[order], common)].astype(np.int64))
    return common, rows


def _resampled(stat: PairStatistic, rows: np.ndarray, fn: Callable[..., np.ndarray]) -> Callable:
    """``fn`` over ``stat``'s arrays, with shared-row resample indices ``(r, n)`` mapped to its own rows."""
    arrays = [np.asarray(a) for a in stat.arrays]
    if rows.shape[0] == arrays[0].shape[0] and np.array_equal(rows, np.arange(rows.shape[0])):
        return lambda idx: fn(*(a[idx] for a in arrays))  # no row dropped: skip the remapping
    return lambda idx: fn(*(a[rows[idx]] for a in arrays))


def _chunk(statistics: Sequence[PairStatistic], n: int) -> int:
    width = max(
        (int(np.prod(np.asarray(a).shape[1:], dtype=np.int64)) for s in statistics for a in s.arrays),
        default=1,
    )
    return max(1, CHUNK_ELEMENTS // (n * max(width, 1)))


# ------------------------------------------------------------------------------------------ one statistic


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _empty_entry(candidate: PairStatistic, floor: Mapping[str, PairStatistic], n: int) -> dict[str, Any]:
    """The results.json entry of one statistic before anything is computed (all fields, in order)."""
    return {
        "estimate": None,
        "estimate_low": None,
        "estimate_high": None,
        "floor": None,
        "floor_low": None,
        "floor_high": None,
        "floor_models": list(floor),
        "shortfall": None,
        "signed": None,
        "tested": None,
        "low": None,
        "high": None,
        "level": None,
        "margin": None,
        "mode": "noise_floor" if floor else "absolute",
        "resampling": "examples",
        "decision": "inconclusive" if candidate.judged else None,
        "judged": candidate.judged,
        "why_not_judged": candidate.why_not_judged or None,
        "alike": candidate.alike,
        "n_examples": n,
        "n_resamples": 0,
    }


def resampling_of(n_replicas: int, settings: VerdictSettings) -> str:
    """``"examples+replicas"`` when the floor's replicas are drawn in each resample, else ``"examples"``."""
    if not (settings.replica_resampling and n_replicas >= 2):
        return "examples"
    return "examples+replicas+candidate_seed" if settings.candidate_seed_spread else "examples+replicas"


def _floor_test(
    key: str, alike: str, est: np.ndarray, res: np.ndarray, settings: VerdictSettings
) -> tuple[IntervalTest, dict[str, Any]]:
    """Non-inferiority of row 0 (the candidate) against the mean of the other rows (the replicas), the
    replicas drawn with replacement in each resample when :func:`resampling_of` says so."""
    k, n_res = est.shape[0] - 1, res.shape[1]
    counts = replica_counts(k, n_res, settings.seed) if resampling_of(k, settings) != "examples" else None
    floor_est = float(np.mean(est[1:]))
    floor_res = floor_resamples(res[1:], counts, settings.spread_correction)
    f_low, f_high, _, _ = percentile_interval(floor_res, settings.confidence)
    sf = float(shortfall(est[0], floor_est, alike))
    cand_res = res[0]
    if settings.candidate_seed_spread and k >= 2:
        cand_res = cand_res + seed_deviation(res[1:], settings.seed)
    test = noninferiority(
        sf, shortfall(cand_res, floor_res, alike), settings.margin(key), settings.confidence
    )
    fields = {"floor": floor_est, "floor_low": f_low, "floor_high": f_high, "shortfall": sf}
    return test, {k: _num(v) for k, v in fields.items()}


def judge_statistic(
    key: str, candidate: PairStatistic, floor: Mapping[str, PairStatistic], settings: VerdictSettings
) -> tuple[dict[str, Any], list[str]]:
    """Decide one statistic of one candidate.

    Args:
        key: ``"<characteristic>/<statistic>"`` (the margin's key).
        candidate: the (reference, candidate) statistic. One with ``judged=False`` is resampled and
            reported as any other, with ``decision`` None.
        floor: replica name -> the same statistic of (reference, replica); empty: absolute mode.
        settings: validated settings.

    Returns:
        ``(entry, notes)``: the results.json entry (see :func:`judge`) and sentences for the notes. Fewer
        shared examples than ``settings.min_examples`` give ``inconclusive`` (with a note), whatever the
        interval says.

    Raises:
        ValueError: a malformed PairStatistic (duplicate ids, arrays not one row per id).
    """
    pairs = [candidate, *floor.values()]
    ids, rows = shared_rows(pairs, key)
    n = int(ids.shape[0])
    entry, notes = _empty_entry(candidate, floor, n), []
    entry["resampling"] = resampling_of(len(floor), settings)
    dropped = {name: len(s.example_ids) - n for name, s in zip(["candidate", *floor], pairs, strict=True)}
    if any(dropped.values()):
        lost = ", ".join(f"{name} pair {d}" for name, d in dropped.items() if d)
        notes.append(f"{key}: judged on the {n} examples every pair shares (rows dropped: {lost}).")
    bound = None if floor else settings.absolute_bound(key, candidate.signed is not None)
    if n == 0 or (not floor and bound is None):
        notes.append(
            f"{key}: the candidate and floor pairs share no example; inconclusive."
            if n == 0
            else f"{key}: no noise floor and no absolute threshold; inconclusive (set "
            f"+verdict.absolute.{key.replace('/', '.')}=<threshold>, or give the run a noise floor)."
        )
        return entry, notes
    fns = [_resampled(s, r, s.statistic) for s, r in zip(pairs, rows, strict=True)]
    signed = None if candidate.signed is None else _resampled(candidate, rows[0], candidate.signed)
    if signed is not None and not floor:  # TOST resamples the signed version; with a floor only its estimate
        fns.append(signed)
    est, res = joint_resamples(fns, n, settings.n_bootstrap, settings.seed, _chunk(pairs, n))
    e_low, e_high, _, _ = percentile_interval(res[0], settings.confidence)
    entry.update(estimate=_num(est[0]), estimate_low=_num(e_low), estimate_high=_num(e_high))
    if signed is not None:
        entry["signed"] = _num(float(np.asarray(signed(np.arange(n)[None]), dtype=np.float64).reshape(-1)[0]))
    if floor:
        test, fields = _floor_test(key, candidate.alike, est[: len(pairs)], res[: len(pairs)], settings)
        entry.update(fields, tested="shortfall")
    elif signed is not None:
        test = tost(est[-1], res[-1], bound, settings.confidence)
        entry["tested"] = "signed"
    else:
        test = one_sided(est[0], res[0], bound, candidate.alike, settings.confidence)
        entry["tested"] = "statistic"
    entry.update(_test_fields(test))
    if not candidate.judged:
        entry["decision"] = None
    elif floor and len(floor) < candidate.min_replicas:
        entry.update(
            decision=None,
            judged=False,
            why_not_judged=(
                f"a floor of {len(floor)} replica cannot measure this statistic's seed-to-seed spread; "
                f"it is judged against {candidate.min_replicas} or more (noise_floor.n_auto=3)"
            ),
        )
    elif n < settings.min_examples:
        entry["decision"] = "inconclusive"
        notes.append(
            f"{key}: {n} shared examples, fewer than verdict.min_examples = {settings.min_examples}: "
            f"inconclusive whatever the interval says (its bootstrap level does not hold on so few; "
            f"docs/verdict.md)."
        )
    return entry, notes


def _test_fields(test: IntervalTest) -> dict[str, Any]:
    return {
        "low": _num(test.low),
        "high": _num(test.high),
        "level": test.level,
        "margin": test.bound,
        "decision": test.decision,
        "n_resamples": test.n_resamples,
    }


# ------------------------------------------------------------------------------------------ all candidates


def _statistics_of(
    char: Characteristic, reference: ModelOutputs, other: ModelOutputs
) -> dict[str, PairStatistic] | str:
    """The pair statistics by name, or the reason there are none."""
    try:
        stats = char.pair_statistics(reference, other)
    except ValueError as err:
        return str(err)
    return {s.name: s for s in stats} if stats else "no pair statistics"


def _judge_candidate(
    characteristics: Sequence[Characteristic],
    reference: ModelOutputs,
    candidate: ModelOutputs,
    floor_stats: Mapping[str, Mapping[str, dict[str, PairStatistic] | str]],
    settings: VerdictSettings,
) -> dict[str, Any]:
    judged: dict[str, str] = {}
    statistics: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for char in characteristics:
        stats = _statistics_of(char, reference, candidate)
        if isinstance(stats, str):
            notes.append(f"{char.name}: not judged ({stats}).")
            continue
        decisions = []
        for name, stat in stats.items():
            key = f"{char.name}/{name}"
            replicas = {}
            for replica, theirs in floor_stats[char.name].items():
                if isinstance(theirs, Mapping) and name in theirs:
                    replicas[replica] = theirs[name]
                else:
                    reason = theirs if isinstance(theirs, str) else "statistic missing"
                    notes.append(f"{key}: floor replica {replica} left out ({reason}).")
            if floor_stats[char.name] and not replicas:
                notes.append(f"{key}: no floor replica has it; judged with absolute margins.")
            entry, entry_notes = judge_statistic(key, stat, replicas, settings)
            statistics[key] = entry
            notes.extend(entry_notes)
            if entry["judged"]:
                decisions.append(entry["decision"])
            else:
                notes.append(f"{key}: reported, not judged ({entry['why_not_judged']}).")
        if decisions:
            judged[char.name] = worst(decisions)
        else:
            notes.append(f"{char.name}: not judged (none of its statistics is judged).")
    if not judged:
        notes.append("No characteristic could be judged; overall inconclusive.")
    n_floor = max((len(e["floor_models"]) for e in statistics.values()), default=0)
    if n_floor == 1:
        notes.append(
            "The noise floor has one replica: its intervals cover the sampling of examples, not how another "
            "seed would have fallen (the floor's seed-to-seed spread), so the decisions err towards "
            "'equivalent' at the margin; give it 3 or more (noise_floor.n_auto=3 or "
            "noise_floor.seeds=[1,2,3])."
        )
    notes = list(dict.fromkeys(notes))  # one note per fact, however many statistics share it
    return {
        "overall": worst(judged.values()) if judged else "inconclusive",
        **judged,
        "statistics": statistics,
        "notes": notes,
    }


def judge(
    characteristics: Iterable[Characteristic],
    reference: ModelOutputs,
    candidates: Sequence[ModelOutputs],
    floor: Sequence[ModelOutputs],
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The results.json ``"verdict"`` object.

    Args:
        characteristics: those that ran (skipped ones are not passed); one without pair statistics, or whose
            ``pair_statistics`` raises ValueError for a candidate, is named in that candidate's notes and not
            judged.
        reference: the reference's outputs on the split judged.
        candidates: the candidates' outputs on the same split (names unique).
        floor: the noise-floor replicas' outputs (the reference fine-tuned with other seeds); empty:
            absolute margins.
        settings: the ``verdict:`` config block (:class:`VerdictSettings`).

    Returns:
        ``{}`` when ``settings.enabled`` is false, else one entry per candidate::

            {"<candidate>": {
                "overall": v, "<characteristic>": v, ...,
                "statistics": {"<characteristic>/<statistic>": entry, ...},
                "notes": [str, ...]}}

        with ``v`` in ``equivalent | not_equivalent | inconclusive``; each ``entry`` holds ``estimate``
        (the candidate pair's statistic on the shared rows) with
        ``estimate_low``/``estimate_high`` (its interval at ``confidence``), ``floor`` (mean replica
        statistic) with ``floor_low``/``floor_high``, ``floor_models``, ``shortfall``, ``signed`` (the signed
        version's estimate, if any), ``tested`` (what ``low``/``high`` bound: ``"shortfall"``, ``"signed"``
        or ``"statistic"``), ``low``, ``high``, ``level`` (their two-sided level), ``margin`` (margin or
        threshold), ``mode`` (``"noise_floor"`` | ``"absolute"``), ``decision``, ``alike``, ``n_examples``,
        ``n_resamples``. NaN and absent values are None.

    Raises:
        ConfigError: invalid settings (:meth:`VerdictSettings.from_mapping`).
        ValueError: duplicate candidate names, or a malformed PairStatistic.
    """
    cfg = VerdictSettings.from_mapping(settings)
    if not cfg.enabled:
        return {}
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique for the verdict, got {names}")
    chars = list(characteristics)
    floor_stats = {ch.name: {r.name: _statistics_of(ch, reference, r) for r in floor} for ch in chars}
    return {c.name: _judge_candidate(chars, reference, c, floor_stats, cfg) for c in candidates}


# ------------------------------------------------------------------------------------------ report table


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _with_interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None and low is None:
        return ""
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def verdict_table(verdict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for the report and the run note: one per candidate and statistic, then one per candidate and
    characteristic giving its verdict, then the candidate's overall verdict.

    Columns: ``candidate``, ``characteristic``, ``statistic``, ``mode``, ``estimate`` (float or None),
    ``interval`` (the estimate's interval), ``floor`` (``"mean [low, high]"`` or ``""``), ``test`` (the
    tested quantity with its interval and level, e.g. ``"shortfall 0.0120 [0.0050, 0.0190] (95%)"``),
    ``margin`` (float, or None without a threshold), ``resampling`` (``examples`` or
    ``examples+replicas``), ``decision`` (``"not judged"`` for a statistic reported without a decision).
    """
    rows: list[dict[str, Any]] = []
    for cand, res in verdict.items():
        for key, e in res.get("statistics", {}).items():
            char, _, stat = key.partition("/")
            test = ""
            if e.get("tested"):
                value = {"shortfall": e["shortfall"], "signed": e["signed"], "statistic": e["estimate"]}[
                    e["tested"]
                ]
                test = f"{e['tested']} {_with_interval(value, e['low'], e['high'])} ({e['level']:.0%})"
            rows.append(
                {
                    "candidate": cand,
                    "characteristic": char,
                    "statistic": stat,
                    "mode": e["mode"],
                    "estimate": "" if e["estimate"] is None else e["estimate"],
                    "interval": f"[{_fmt(e['estimate_low'])}, {_fmt(e['estimate_high'])}]",
                    "floor": _with_interval(e["floor"], e["floor_low"], e["floor_high"]),
                    "test": test,
                    "margin": "" if e["margin"] is None else e["margin"],
                    "resampling": e.get("resampling", ""),
                    "decision": e["decision"] or "not judged",
                }
            )
        for char, v in res.items():
            if char not in ("overall", "statistics", "notes"):
                rows.append({"candidate": cand, "characteristic": char, "statistic": "(all)", "decision": v})
        rows.append({"candidate": cand, "characteristic": "(overall)", "decision": res["overall"]})
    return rows


def judge_run(plan: Any, runners: Sequence[Any], comparison: Any, settings: Mapping[str, Any] | None) -> dict:
    """:func:`judge` over an evaluate run on its main split: the characteristics that ran there, the
    reference's, candidates' and noise-floor replicas' outputs (``plan``: a :class:`trustequiv.run.plan.Plan`,
    ``runners``: its model runners, ``comparison``: the :class:`trustequiv.run.comparison.Comparison`)."""
    main = plan.main_split
    outputs = {r.name: r.outputs[main] for r in runners}
    ran = [c for c in plan.characteristics if c.runs_on(main) and c.name not in comparison.skipped]
    return judge(
        ran,
        outputs[plan.reference.name],
        [outputs[c.name] for c in plan.candidates],
        [outputs[m.name] for m in plan.floor.models],
        settings,
    )
