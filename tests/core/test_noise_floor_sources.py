"""Noise floors from anywhere (``noise_floor.predictions`` / ``checkpoints``), their names and bad input, and
the exact round trip of a predictions CSV that lets a run's replica stand in as a floor elsewhere."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import write_classifier

from plugins.sources.predictions.source import PredictionsSource
from trustequiv.data.task_kind import task_kind
from trustequiv.models.source import RunContext, build_source
from trustequiv.models.spec import check_name
from trustequiv.outputs import ModelOutputs
from trustequiv.report.run_report import write_predictions
from trustequiv.user_errors import ConfigError, MissingFileError, one_line
from trustequiv.verdict.noise_floor import FloorSettings, floor_name, make_noise_floor

LABELS = ("negative", "neutral", "positive")
TASK = {"name": "toy", "kind": "classification", "label_names": list(LABELS)}
RUN = SimpleNamespace(seed=42)  # what make_noise_floor reads of the run when nothing is fine-tuned


def _outputs(n: int = 500, scale: float = 12.0) -> ModelOutputs:
    """float32 logits as a model gives them, wide enough that some probabilities are tiny (~1e-15)."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(n, 3, generator=g) * scale).float()
    labels = torch.randint(0, 3, (n,), generator=g)
    return ModelOutputs("m", torch.arange(n) * 3 + 1, logits, labels, LABELS)


def _read_back(path: Path, out: ModelOutputs) -> ModelOutputs:
    data = datasets.Dataset.from_dict({"id": out.example_ids.tolist(), "label": out.labels.tolist()})
    ctx = RunContext(TASK, task_kind(TASK), None, {}, {}, "", Path("unused"), dataset=lambda: None)
    source = PredictionsSource({"source": "predictions", "path": str(path)})
    source.prepare(ctx)
    return source.outputs(data, TASK, "test", ctx)[0]


def test_a_written_csv_reads_back_exactly(tmp_path):
    out = _outputs()
    write_predictions(out, tmp_path / "m.csv")
    back = _read_back(tmp_path / "m.csv", out)
    # before: 6 decimals, probabilities off by up to 5e-7 (tiny ones read as 1e-7) and equal-mass ECE moved
    assert torch.equal(back.probs.float(), out.probs.float())  # bit-identical as float32
    assert torch.allclose(back.probs, out.probs, rtol=1e-14, atol=0)  # and as the float64 metrics see them
    assert torch.equal(back.predictions, out.predictions) and torch.equal(back.labels, out.labels)
    assert float(out.probs.min()) < 1e-9  # tiny probabilities are kept, not floored


def _reference(tmp_path) -> object:
    """A reference with no recipe here: a predictions file made elsewhere."""
    return build_source({"source": "predictions", "name": "ext", "path": str(tmp_path / "ext.csv")})


def test_any_reference_gets_a_floor_from_predictions_and_checkpoints(tmp_path, tiny_bert):
    csvs = [tmp_path / "a" / "ext+seed1.csv", tmp_path / "b" / "ext+seed1.csv", tmp_path / "r 2.csv"]
    for p in csvs:
        p.parent.mkdir(exist_ok=True)
        p.write_text("example_id,gold_label,p_negative,p_positive\n")
    checkpoint = write_classifier(tiny_bert, tmp_path / "published" / "ext-seed3")
    settings = {
        "seeds": "auto",  # explicit floors win: nothing is fine-tuned (the reference has no recipe anyway)
        "predictions": [str(p) for p in csvs],
        "checkpoints": [f"{checkpoint}/"],
    }
    floor = make_noise_floor(
        _reference(tmp_path), settings, RUN, reference_cfg={"source": "predictions"}, taken=["ext+floor-r_2"]
    )
    names = [m.name for m in floor.models]
    assert names == ["ext+floor-seed1", "ext+floor-seed1-2", "ext+floor-r_2-2", "ext+floor-ext-seed3"]
    assert all(check_name(n, "name") == n for n in names)  # safe as predictions/<name>.csv and a model dir
    assert floor.seeds == [] and floor.notes == []
    assert [m.kind for m in floor.models] == ["predictions"] * 3 + ["hf"]
    assert floor.sources["ext+floor-seed1-2"] == {"from": "predictions", "path": str(csvs[1])}
    hf = floor.models[-1]
    assert hf.spec.checkpoint == str(checkpoint) and hf.spec.name == "ext+floor-ext-seed3"
    assert floor.as_dict()["sources"]["ext+floor-ext-seed3"] == {
        "from": "checkpoint",
        "checkpoint": str(checkpoint),
    }


def test_a_checkpoint_replica_inherits_the_reference_model_config():
    floor = make_noise_floor(
        _reference(Path("/x")),
        {"seeds": [], "checkpoints": ["org/bert-seed2"]},  # a hub id: checked when it is prepared
        RUN,
        reference_cfg={"name": "bert", "pretrained": "bert-base-uncased", "label_names": ["a", "b"],
                       "revision": "abc", "zoo": {"sst2": {"checkpoint": "x"}}},
    )  # fmt: skip
    spec = floor.models[0].spec
    assert spec.name == "ext+floor-bert-seed2" and spec.checkpoint == "org/bert-seed2"
    assert spec.label_names == ["a", "b"] and spec.pretrained == "bert-base-uncased" and spec.revision is None


def test_floor_names_are_unique_and_safe():
    taken = {"ref"}
    assert floor_name("ref", "runs/x/predictions/ref+seed1.csv", taken) == "ref+floor-seed1"
    assert floor_name("ref", "other/ref+seed1.csv", taken) == "ref+floor-seed1-2"
    assert floor_name("ref", "org/odd:name@v1", taken) == "ref+floor-odd_name_v1"
    assert floor_name("ref", "..", taken).startswith("ref+floor-")
    assert all(check_name(n, "name") == n for n in taken)


@pytest.mark.parametrize(
    ("settings", "error", "says"),
    [
        (
            {"predictions": ["no/such.csv"]},
            MissingFileError,
            "noise_floor.predictions: file not found: no/such.csv",
        ),
        ({"predictions": ["{tmp}"]}, ConfigError, "is a directory, not a predictions file"),
        ({"predictions": ["{tmp}/x.txt"]}, ConfigError, "neither a predictions CSV"),
        ({"checkpoints": ["{tmp}"]}, MissingFileError, "has no config.json"),
        ({"checkpoints": ["{tmp}/x.txt"]}, ConfigError, "is a file, not a checkpoint directory"),
        (
            {"checkpoints": ["./no/such/dir"]},
            MissingFileError,
            "checkpoint directory ./no/such/dir does not exist",
        ),
        ({"predictions": [3]}, ConfigError, "noise_floor.predictions must be a list of paths"),
        ({"n_auto": 0}, ConfigError, "noise_floor.n_auto must be a positive integer"),
    ],
)
def test_bad_floor_input_is_one_line_naming_the_key_and_fix(tmp_path, settings, error, says):
    (tmp_path / "x.txt").write_text("")
    fill = lambda v: v.format(tmp=tmp_path) if isinstance(v, str) else v  # noqa: E731
    settings = {k: [fill(v) for v in vs] if isinstance(vs, list) else vs for k, vs in settings.items()}
    with pytest.raises(error) as info:
        make_noise_floor(_reference(tmp_path), {"seeds": [], **settings}, RUN)
    line = one_line(info.value)
    assert line.startswith("error: noise_floor.") and says in line and " - fix: " in line


def test_settings_default_to_auto_with_three_seeds():
    s = FloorSettings.read({}, 42)
    assert s.seeds is None and s.n_auto == 3 and s.predictions == () and s.checkpoints == ()
    assert FloorSettings.read({"predictions": "one.csv"}, 42).predictions == ("one.csv",)
    assert FloorSettings.read([1, 2], 42).seeds == [1, 2]  # a bare seeds value
    assert np.array_equal(FloorSettings.read({"seeds": [3, 3, 1]}, 42).seeds, [3, 1])
