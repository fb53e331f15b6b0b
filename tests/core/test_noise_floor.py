"""The noise floor: the reference fine-tuned again with another seed, compared with it like a candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import compose, tiny_overrides

from trustequiv.models.loading import read_metadata
from trustequiv.plain import plain
from trustequiv.run import pipeline
from trustequiv.run.plan import make_plan
from trustequiv.user_errors import ConfigError, one_line
from trustequiv.verdict.noise_floor import auto_seeds, make_noise_floor, wanted_seeds

FAST = ["trainer.max_epochs=3", "task.training.learning_rate=5e-3"]


def test_wanted_seeds():
    assert wanted_seeds("auto", 42) is None
    assert wanted_seeds(None, 42) is None
    assert wanted_seeds([1, 2, 1], 42) == [1, 2]
    assert wanted_seeds([], 42) == []
    for bad in ("one", [1.5, "x"], 3, [42, 1]):
        with pytest.raises(ConfigError, match=r"noise_floor\.seeds"):
            wanted_seeds(bad, 42)


def test_auto_seeds_count_up_from_one_skipping_the_run_seed():
    assert auto_seeds(3, 42) == [1, 2, 3] and auto_seeds(3, 2) == [1, 3, 4] and auto_seeds(1, 1) == [2]


def test_the_reference_own_seed_is_refused_in_one_line():
    # before: dropped silently, and the floor turned off
    with pytest.raises(ConfigError) as info:
        wanted_seeds([42], 42)
    assert one_line(info.value) == (
        "error: noise_floor.seeds=[42] includes the reference's own training seed 42 - fix: use other seeds, "
        "e.g. noise_floor.seeds=[1,2,3]"
    )


def _floor(tmp_path, tiny_bert, data_dir, *extra):
    cfg = compose("evaluate", tiny_overrides(tmp_path, tiny_bert, data_dir, *extra))
    p = make_plan(cfg)
    ctx = pipeline.run_context(cfg, p.task_cfg, dataset=p.dataset)
    return make_noise_floor(p.reference, plain(cfg.noise_floor), ctx, reference_cfg=p.reference_cfg)


def test_auto_is_off_with_a_note_when_nothing_may_be_trained(tmp_path, tiny_bert, synthetic_data_dir):
    floor = _floor(tmp_path, tiny_bert, synthetic_data_dir, "noise_floor.seeds=auto")
    assert floor.models == []
    assert "train_missing" in floor.notes[0] and "tiny_ref+seed1" in floor.notes[0]


def test_auto_takes_n_auto_seeds_when_the_reference_can_be_fine_tuned(
    tmp_path, tiny_bert, synthetic_data_dir
):
    floor = _floor(tmp_path, tiny_bert, synthetic_data_dir, "noise_floor.seeds=auto", "train_missing=true")
    assert [m.name for m in floor.models] == ["tiny_ref+seed1", "tiny_ref+seed2", "tiny_ref+seed3"]
    assert floor.seeds == [1, 2, 3] and floor.sources["tiny_ref+seed2"] == {"from": "seed", "seed": 2}
    floor = _floor(
        tmp_path, tiny_bert, synthetic_data_dir, "noise_floor.seeds=auto", "noise_floor.n_auto=1", "seed=1"
    )
    assert floor.models == [] and "tiny_ref+seed2" in floor.notes[0]  # seed 1 is the run's own


def test_no_floor_for_a_checkpoint_made_elsewhere(tmp_path, tiny_bert, synthetic_data_dir):
    floor = _floor(
        tmp_path, tiny_bert, synthetic_data_dir, "noise_floor.seeds=[1]", f"reference.checkpoint={tiny_bert}"
    )
    assert floor.models == [] and "made elsewhere" in floor.notes[0]


def test_predictions_source_has_no_floor(tmp_path):
    from trustequiv.models.source import build_source

    source = build_source({"name": "elsewhere", "source": "predictions", "path": str(tmp_path / "p.csv")})
    replica, why = source.replica(1, ctx=None)
    assert replica is None and "predictions source" in why


def test_missing_replica_names_the_command(floor_run, tiny_bert, synthetic_data_dir):
    # reference and candidate exist, the replica for seed 2 does not, and training is not allowed
    tmp, _ = floor_run
    cfg = compose("evaluate", _floor_overrides(tmp, tiny_bert, synthetic_data_dir, seeds="[2]"))
    with pytest.raises(FileNotFoundError, match=r"seed=2 model.name=tiny_ref\+seed2"):
        pipeline.evaluate(cfg)


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory, tiny_bert, synthetic_data_dir):
    tmp = tmp_path_factory.mktemp("floor")
    # the candidate is the reference quantized at load: only the reference and its replica are fine-tuned
    cfg = compose("evaluate", _floor_overrides(tmp, tiny_bert, synthetic_data_dir, "train_missing=true"))
    return tmp, pipeline.evaluate(cfg)


def _floor_overrides(tmp, tiny_bert, data_dir, *extra, seeds="[1]"):
    return tiny_overrides(
        tmp,
        tiny_bert,
        data_dir,
        "compressor=quantize_dynamic",
        f"noise_floor.seeds={seeds}",
        *FAST,
        *extra,
        candidate="tiny_ref",
    )


def test_replica_is_the_reference_fine_tuned_with_another_seed(floor_run):
    tmp, result = floor_run
    reference = read_metadata(tmp / "models" / "sst2" / "tiny_ref")
    replica = read_metadata(tmp / "models" / "sst2" / "tiny_ref+seed1")
    assert replica["seed"] == 1 and reference["seed"] == 42
    assert replica["training"] == reference["training"] and replica["pretrained"] == reference["pretrained"]
    # compared with the reference exactly as a candidate is
    metrics = result["metrics"]
    for char_metric in ("errors/{}/error_jaccard", "calibration/{}/ece_uniform_diff"):
        assert char_metric.format("tiny_ref_vs_tiny_ref+seed1") in metrics
        assert char_metric.format("tiny_ref_vs_tiny_ref+quantize_dynamic") in metrics
    results = json.loads((Path(result["output_dir"]) / "results.json").read_text())
    assert results["noise_floor"]["models"] == ["tiny_ref+seed1"]
    assert results["candidates"] == ["tiny_ref+quantize_dynamic"]  # the replica is not a candidate
    # the verdict judges the candidate against the floor; the replica is not judged
    verdict = results["verdict"]
    assert list(verdict) == ["tiny_ref+quantize_dynamic"]
    stat = verdict["tiny_ref+quantize_dynamic"]["statistics"]["errors/error_jaccard"]
    assert stat["mode"] == "noise_floor" and stat["floor_models"] == ["tiny_ref+seed1"]
    assert verdict["tiny_ref+quantize_dynamic"]["overall"] in ("equivalent", "not_equivalent", "inconclusive")
    assert "noise floor" in (Path(result["output_dir"]) / "report.html").read_text().lower()


def test_second_run_reuses_the_replica(floor_run, tiny_bert, synthetic_data_dir):
    tmp, _ = floor_run
    cfg = compose("evaluate", _floor_overrides(tmp, tiny_bert, synthetic_data_dir))
    result = pipeline.evaluate(cfg)
    assert result["cached"]["tiny_ref+seed1/test"] is True


# the verdict's statistics that must not depend on where the floor's replica comes from
JUDGED = ("estimate", "floor", "shortfall", "low", "high", "decision")


def _verdict_statistics(run_dir) -> tuple[dict, dict]:
    results = json.loads((Path(run_dir) / "results.json").read_text())
    stats = results["verdict"]["tiny_ref+quantize_dynamic"]["statistics"]
    return results, {key: {f: entry.get(f) for f in JUDGED} for key, entry in stats.items()}


@pytest.mark.parametrize("given", ["predictions", "checkpoints"])
def test_a_floor_made_elsewhere_gives_the_verdict_of_the_floor_fine_tuned_here(
    given, floor_run, tiny_bert, synthetic_data_dir, tmp_path
):
    # the key check: the replica fine-tuned here (seed 1), given back as its predictions CSV or checkpoint
    tmp, first = floor_run
    _, want = _verdict_statistics(first["output_dir"])
    if given == "predictions":
        entry = tmp_path / "tiny_ref+seed1.csv"
        shutil.copy(Path(first["output_dir"]) / "predictions" / entry.name, entry)
    else:
        entry = tmp / "models" / "sst2" / "tiny_ref+seed1"
    overrides = _floor_overrides(
        tmp,
        tiny_bert,
        synthetic_data_dir,
        f"noise_floor.{given}=['{entry}']",
        f"paths.output_dir={tmp_path / 'run'}",
        seeds="[]",
    )
    result = pipeline.evaluate(compose("evaluate", overrides))
    results, got = _verdict_statistics(result["output_dir"])
    floor = results["noise_floor"]
    assert floor["seeds"] == [] and floor["models"] == ["tiny_ref+floor-seed1"]
    source = {"from": "predictions", "path": str(entry)}
    if given == "checkpoints":
        source = {"from": "checkpoint", "checkpoint": str(entry)}
    assert floor["sources"] == {"tiny_ref+floor-seed1": source}
    assert (Path(result["output_dir"]) / "predictions" / "tiny_ref+floor-seed1.csv").is_file()
    assert any(k.startswith("calibration/") for k in want) and any(k.startswith("errors/") for k in want)
    assert set(got) == set(want)
    for key, entry_want in want.items():
        for f, v in entry_want.items():
            expected = pytest.approx(v, abs=1e-12) if isinstance(v, float) else v
            assert got[key][f] == expected, (key, f)
    stat = results["verdict"]["tiny_ref+quantize_dynamic"]["statistics"]["errors/error_jaccard"]
    assert stat["mode"] == "noise_floor" and stat["floor_models"] == ["tiny_ref+floor-seed1"]
