"""Sweep aggregation: run outputs saved in run dirs, all-pairs matrices across a -m sweep's jobs, the
candidates' verdicts, failed jobs listed (trustequiv.report.saved_outputs, .sweep, .sweep_report)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_classifier, write_tiny_bert
from omegaconf import OmegaConf
from sklearn.metrics import jaccard_score

from trustequiv.characteristic import Characteristic, PairStatistic
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align
from trustequiv.report.saved_outputs import load_run_outputs, save_run_outputs
from trustequiv.report.sweep import SweepCallback, build_sweep, collect, pair_matrices

LABELS = ("negative", "positive")


def _jaccard_rows(wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    union = np.sum(wa | wb, axis=-1)
    return np.where(union == 0, 1.0, np.sum(wa & wb, axis=-1) / np.maximum(union, 1))


def _accuracy_gap(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    return ca.mean(axis=-1) - cb.mean(axis=-1)


def error_statistics(reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
    """Error-set Jaccard (symmetric) and the signed accuracy gap (reference minus candidate)."""
    a, b = align(reference, candidate)
    ca = (a.predictions == a.labels).numpy()
    cb = (b.predictions == b.labels).numpy()
    ids = a.example_ids.numpy()
    return [
        PairStatistic("error_jaccard", "higher", ids, (~ca, ~cb), _jaccard_rows),
        PairStatistic("accuracy_gap", "lower", ids, (ca.astype(float), cb.astype(float)), _accuracy_gap),
    ]


class Paired(Characteristic):
    """A characteristic with pair statistics (built by the sweep through a test conf dir)."""

    name = "paired"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def compare(self, reference, candidate):
        return CharacteristicResult()

    def pair_statistics(self, reference, candidate):
        return error_statistics(reference, candidate)


class NoStatistics(Paired):
    name = "none"

    def pair_statistics(self, reference, candidate):
        return []


class Picky(Paired):
    name = "picky"

    def pair_statistics(self, reference, candidate):
        if "c" in (reference.name, candidate.name):
            raise ValueError("c is not comparable")
        return error_statistics(reference, candidate)[:1]


def _outputs(name: str, n: int = 40, seed: int = 0, **kw) -> ModelOutputs:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    return ModelOutputs(
        name=name,
        example_ids=torch.arange(n) * 3 + 1,
        logits=torch.randn(n, 2, generator=g),
        labels=labels,
        label_names=LABELS,
        **kw,
    )


def _errors(out: ModelOutputs) -> np.ndarray:
    return (out.predictions != out.labels).numpy()


# ------------------------------------------------------------------------------------------- run outputs
def test_run_outputs_roundtrip(tmp_path):
    qa = _outputs(
        "m/with slash",
        n=4,
        embeddings=torch.randn(4, 3),
        correct=torch.tensor([True, False, True, True]),
        columns={"answer": ["a", "", "c", "d"], "f1": [np.float32(0.5), 0.0, 1.0, 1.0]},
        info={"threshold": np.float64(0.25), "counts": np.arange(2)},
        collected={"adversarial": {"broken": [1, 4], "replay": {"x": 1}}},
        ood={"snli/test": _outputs("m/with slash", n=2)},
    )
    plain = _outputs("tiny_ref", n=6, seed=1)
    save_run_outputs(tmp_path, {"tiny_ref": plain, qa.name: qa})
    loaded = load_run_outputs(tmp_path)
    assert list(loaded) == ["tiny_ref", "m/with slash"]
    back = loaded["m/with slash"]
    for field in ("example_ids", "logits", "labels", "embeddings", "correct"):
        assert torch.equal(getattr(back, field), getattr(qa, field)), field
    assert back.label_names == LABELS and back.ood == {}
    assert back.columns == {"answer": ["a", "", "c", "d"], "f1": [0.5, 0.0, 1.0, 1.0]}
    assert back.info == {"threshold": 0.25, "counts": [0, 1]}
    assert back.collected == {"adversarial": {"broken": [1, 4], "replay": {"x": 1}}}
    assert loaded["tiny_ref"].embeddings is None and loaded["tiny_ref"].correct is None
    # no model name becomes a path; only safetensors and JSON are written
    written = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".json", ".safetensors"}
    assert not any("slash" in str(p) for p in written)
    assert load_run_outputs(tmp_path / "nothing") == {}


def test_run_outputs_index_is_checked(tmp_path):
    save_run_outputs(tmp_path, {"a": _outputs("a")})
    index = tmp_path / "outputs" / "models.json"
    index.write_text(json.dumps({"format": 1, "models": {"a": "../../../etc/passwd"}}))
    with pytest.raises(ValueError, match=r"models\.json is not a run-outputs index"):
        load_run_outputs(tmp_path)


# ------------------------------------------------------------------------------------------- matrices
def test_pair_matrices_every_model_against_every_other():
    outs = {n: _outputs(n, seed=s) for s, n in enumerate(["ref", "a", "b"])}
    notes: list[str] = []
    got = pair_matrices(outs, [Paired(), NoStatistics()], notes)
    assert set(got) == {"paired/error_jaccard", "paired/accuracy_gap"}
    jac = got["paired/error_jaccard"]
    assert jac["models"] == ["ref", "a", "b"] and jac["alike"] == "higher"
    values = np.array(jac["values"], dtype=float)
    for i, a in enumerate(outs.values()):
        for j, b in enumerate(outs.values()):
            want = jaccard_score(_errors(a), _errors(b))  # scikit-learn: |A & B| / |A | B| of the error sets
            assert values[i, j] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(values, values.T)
    np.testing.assert_allclose(np.diag(values), 1.0)
    # rows take the reference's place: an asymmetric statistic keeps its sign
    gap = np.array(got["paired/accuracy_gap"]["values"], dtype=float)
    np.testing.assert_allclose(gap, -gap.T, atol=1e-12)
    acc = [1 - _errors(o).mean() for o in outs.values()]
    assert gap[0, 1] == pytest.approx(acc[0] - acc[1], abs=1e-12)
    assert notes == []


def test_pair_matrices_leave_out_what_cannot_be_compared():
    outs = {n: _outputs(n, seed=s) for s, n in enumerate(["ref", "c", "b"])}
    outs["errors_only"] = ModelOutputs(
        name="errors_only",
        example_ids=outs["ref"].example_ids,
        logits=None,
        labels=outs["ref"].labels,
        label_names=LABELS,
        correct=torch.ones(40, dtype=torch.bool),
    )
    notes: list[str] = []
    got = pair_matrices(outs, [Picky()], notes)
    values = got["picky/error_jaccard"]["values"]
    assert values[0][2] is not None and values[0][1] is None and values[1][1] is None
    assert all(v is None for v in values[3]) and all(row[3] is None for row in values)
    assert any("c is not comparable" in n for n in notes)
    assert any("errors_only carries no per-example scores" in n for n in notes)


# --------------------------------------------------------------------------------------- a sweep dir by hand
def _job(
    sweep: Path, num: int, name: str, *, results: dict | None, outputs: dict | None = None, log: str = ""
):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"task": {"name": "sst2"}, "model": {"name": name.split("_")[-1]}}),
        job / ".hydra" / "config.yaml",
    )
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job / ".hydra" / "hydra.yaml")
    if outputs is not None:
        save_run_outputs(job, outputs)
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if log:
        (job / "evaluate.log").write_text(log)
    return job


def _results(candidate: str, characteristic: dict, verdict: dict | None = None) -> dict:
    out = {"task": "sst2", "reference": "ref", "candidates": [candidate], "metrics": {}}
    out["config"] = {"task": {"name": "sst2"}, "characteristic": characteristic}
    if verdict is not None:
        out["verdict"] = verdict
    return out


@pytest.fixture
def conf_dir(tmp_path) -> Path:
    (tmp_path / "conf" / "characteristic").mkdir(parents=True)
    (tmp_path / "conf" / "characteristic" / "paired.yaml").write_text(
        "_target_: test_sweep.Paired\nscale: 1.0\n"
    )
    return tmp_path / "conf"


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00_1_abcd"
    ref, a, b = (_outputs(n, seed=s) for s, n in enumerate(["ref", "a", "b"]))
    chars = {"paired": {"_target_": "test_sweep.Paired", "scale": 2.0, "splits": None}}
    verdict_a = {
        "a": {"overall": "equivalent", "paired": "equivalent", "statistics": {"x": 1.0}, "notes": []}
    }
    _job(sweep, 0, "0_sst2_a", results=_results("a", chars, verdict_a), outputs={"ref": ref, "a": a})
    _job(sweep, 1, "1_sst2_b", results=_results("b", chars), outputs={"ref": ref, "b": b})
    _job(
        sweep,
        2,
        "2_sst2_c",
        results=None,
        log=(
            "[2026-01-01 00:00:01][trustequiv.user_errors][ERROR] - "
            "error: no checkpoint for c - fix: train it\n"
        ),
    )
    return sweep


def test_sweep_matrices_verdicts_and_failed_jobs(sweep_dir, conf_dir):
    results = build_sweep(sweep_dir, conf_dir)
    on_disk = json.loads((sweep_dir / "sweep_results.json").read_text())
    assert on_disk == results
    assert results["tasks"] == ["sst2"]
    jac = results["matrices"]["sst2/paired/error_jaccard"]
    assert jac["models"] == ["ref", "a", "b"]  # the reference once, the candidates of both jobs
    values = np.array(jac["values"], dtype=float)
    assert values.shape == (3, 3) and np.isfinite(values).all()
    a, b = load_run_outputs(sweep_dir / "0_sst2_a")["a"], load_run_outputs(sweep_dir / "1_sst2_b")["b"]
    assert values[1, 2] == pytest.approx(jaccard_score(_errors(a), _errors(b)), abs=1e-12)  # across jobs
    assert set(results["verdict"]) == {"sst2/a"}
    assert results["verdict"]["sst2/a"]["overall"] == "equivalent"
    assert [j["dir"] for j in results["jobs"]] == ["0_sst2_a", "1_sst2_b", "2_sst2_c"]
    assert results["failed"] == ["2_sst2_c"]
    failed = results["jobs"][2]
    assert failed["status"] == "failed" and failed["error"] == "error: no checkpoint for c - fix: train it"
    assert results["jobs"][0]["models"] == ["ref", "a"]

    rows = list(csv.DictReader(io.StringIO((sweep_dir / "sweep_verdict.csv").read_text())))
    assert rows == [{"task": "sst2", "candidate": "a", "overall": "equivalent", "paired": "equivalent"}]

    page = (sweep_dir / "sweep_report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "<link" not in page and "<script" not in page  # self-contained
    assert page.index("Verdicts") < page.index("Jobs") < page.index("All-pairs matrices")
    assert "error: no checkpoint for c" in page


def test_sweep_never_imports_a_target_from_a_run_dir(sweep_dir, conf_dir, monkeypatch):
    results_path = sweep_dir / "0_sst2_a" / "results.json"
    data = json.loads(results_path.read_text())
    data["config"]["characteristic"] = {
        "paired": {"_target_": "os.system", "scale": 1.0},
        "../../evil": {"_target_": "os.system"},
        "nested": {"x": {"_target_": "os.system"}},
    }
    results_path.write_text(json.dumps(data))
    imported = []
    import hydra.utils

    real = hydra.utils.get_class
    monkeypatch.setattr(hydra.utils, "get_class", lambda path: imported.append(path) or real(path))
    results = collect(sweep_dir, conf_dir)
    assert imported == []  # job 0's settings came first: every name refused, nothing imported
    assert results["matrices"] == {}
    notes = " ".join(results["notes"])
    assert "the job used os.system, not the shipped test_sweep.Paired" in notes
    assert "'../../evil': not a shipped config" in notes


def test_job_without_outputs_and_unreadable_results_are_listed(tmp_path, conf_dir):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "0_sst2_a", results=_results("a", {}))  # results but no saved outputs
    _job(sweep, 1, "1_sst2_b", results=None)
    (sweep / "1_sst2_b" / "results.json").write_text("{not json")
    results = collect(sweep, conf_dir)
    assert results["failed"] == ["1_sst2_b"]
    assert "results.json unreadable" in results["jobs"][1]["error"]
    assert any("no model outputs saved" in n for n in results["notes"])
    assert results["matrices"] == {}


def test_callback_builds_into_the_sweep_dir(sweep_dir, conf_dir, monkeypatch):
    import trustequiv.report.sweep

    monkeypatch.setattr(trustequiv.report.sweep, "CONF_DIR", conf_dir)
    cfg = OmegaConf.create({"characteristic": {}, "hydra": {"sweep": {"dir": str(sweep_dir)}}})
    cb = SweepCallback()
    cb.on_multirun_start(cfg)
    cb.on_multirun_end(cfg)
    results = json.loads((sweep_dir / "sweep_results.json").read_text())
    assert "sst2/paired/error_jaccard" in results["matrices"]
    cb._at_exit()  # already built: the exit hook does nothing
    # a train.py sweep (no characteristics) is left alone
    (sweep_dir / "sweep_results.json").unlink()
    SweepCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    assert not (sweep_dir / "sweep_results.json").exists()


def _python(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "HYDRA_FULL_ERROR"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_one_line_error_without_jobs(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "absent"):
        proc = _python("-m", "trustequiv.report.sweep", str(target), cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and " - fix: " in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_real_sweep_two_candidates_and_a_failed_job(tmp_path, tiny_bert, synthetic_data_dir, monkeypatch):
    write_classifier(tiny_bert, tmp_path / "models" / "sst2" / "tiny_ref")
    write_classifier(write_tiny_bert(tmp_path / "t1", seed=1), tmp_path / "models" / "sst2" / "tiny_cand")
    write_classifier(write_tiny_bert(tmp_path / "t2", seed=2), tmp_path / "models" / "sst2" / "tiny_cand2")
    args = [
        "task=sst2",
        "model=minilm",
        "model@reference=minilm",
        f"model.pretrained={tiny_bert}",
        f"reference.pretrained={tiny_bert}",
        "reference.name=tiny_ref",
        "model.name=tiny_cand,tiny_cand2,missing",  # the last has no checkpoint: its job fails
        f"paths.data_dir={synthetic_data_dir}",
        f"paths.models_dir={tmp_path / 'models'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "logger=none",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "task.max_length=32",
        "++noise_floor.seeds=[]",
    ]
    proc = _python(str(REPO / "evaluate.py"), "-m", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]  # the failed job's one line stops Hydra's sweep
    (sweep,) = (tmp_path / "logs" / "evaluate" / "multiruns").iterdir()
    # built by the callback's exit hook: Hydra skips on_multirun_end after a failed job
    results = json.loads((sweep / "sweep_results.json").read_text())
    assert [j["dir"] for j in results["jobs"]] == ["0_sst2_tiny_cand", "1_sst2_tiny_cand2", "2_sst2_missing"]
    assert results["failed"] == ["2_sst2_missing"]
    assert results["jobs"][2]["error"].startswith("error: ") and "missing" in results["jobs"][2]["error"]
    assert (sweep / "sweep_report.html").exists() and (sweep / "sweep_verdict.csv").exists()
    for job in results["jobs"][:2]:
        data = json.loads((sweep / job["dir"] / "results.json").read_text())
        assert data["verdict"]
        for candidate in data["verdict"]:
            assert f"sst2/{candidate}" in results["verdict"]

    # every shipped characteristic that gives pair statistics has its matrix over the three models
    from plugins.characteristics.errors import ErrorsCharacteristic

    outs = {
        **load_run_outputs(sweep / "0_sst2_tiny_cand"),
        **load_run_outputs(sweep / "1_sst2_tiny_cand2"),
    }
    assert list(outs) == ["tiny_ref", "tiny_cand", "tiny_cand2"]
    rebuilt = collect(sweep)
    errors = ErrorsCharacteristic()
    for stat in errors.pair_statistics(outs["tiny_cand"], outs["tiny_cand2"]):
        matrix = rebuilt["matrices"][f"sst2/errors/{stat.name}"]
        assert matrix["models"] == ["tiny_ref", "tiny_cand", "tiny_cand2"]
        assert matrix["values"][1][2] == pytest.approx(stat.estimate(), rel=1e-9, abs=1e-12)

    # rebuilt by the command line, over what is on disk
    (sweep / "sweep_results.json").unlink()
    proc = _python("-m", "trustequiv.report.sweep", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(sweep / "sweep_report.html")
    again = json.loads((sweep / "sweep_results.json").read_text())
    assert again["failed"] == ["2_sst2_missing"] and len(again["jobs"]) == 3
