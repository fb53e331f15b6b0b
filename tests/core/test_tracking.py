"""W&B tracking: role-keyed summaries (pure), the mode's precedence, failures that keep the results, and
offline runs through the real pipeline on the tiny model, read back from their transaction logs."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, compose, tiny_overrides

from trustequiv import tracking
from trustequiv.run import pipeline
from trustequiv.tracking import model_logger, role_metrics, run_config, verdict_metrics, wandb_mode
from trustequiv.user_errors import ConfigError

REF, CAND, OTHER = "tiny_ref", "tiny_ref+layer_drop", "tiny_cand"
KEY = "secret-xyz"

# ---------------------------------------------------------------------------------------------- pure


def metrics_of(ref: str, cand: str, floor: tuple[str, ...] = ()) -> dict[str, float | None]:
    pair = f"{ref}_vs_{cand}"
    out: dict[str, float | None] = {
        f"calibration/{ref}/ece_uniform": 0.1,
        f"calibration/{cand}/ece_uniform": 0.2,
        f"calibration/{pair}/ece_uniform_diff": 0.1,
        f"errors/{pair}/error_jaccard": 0.6,
        f"errors/matrix/{pair}/error_jaccard": 0.6,
        f"validation/errors/{pair}/flip_rate": 0.05,  # a non-main split
        f"distribution/{pair}/mnli_mismatched/flag_kappa": None,  # NaN in results.json
    }
    for k, replica in enumerate(floor):
        out[f"calibration/{replica}/ece_uniform"] = 0.1 + 0.02 * k
        out[f"errors/{ref}_vs_{replica}/error_jaccard"] = 0.8 + 0.1 * k
        out[f"errors/matrix/{cand}_vs_{replica}/error_jaccard"] = 0.5  # no role: left out
    return out


def test_role_metrics_keys_by_role():
    floor = (f"{REF}+seed1", f"{REF}+seed2")
    roles = role_metrics(metrics_of(REF, CAND, floor), REF, [CAND], floor)
    assert roles["reference/calibration/ece_uniform"] == 0.1
    assert roles["candidate/calibration/ece_uniform"] == 0.2  # the candidate's name holds the reference's
    assert roles["pair/calibration/ece_uniform_diff"] == 0.1
    assert roles["pair/errors/error_jaccard"] == 0.6
    assert roles["pair/errors/matrix/error_jaccard"] == 0.6
    assert roles["pair/validation/errors/flip_rate"] == 0.05
    assert math.isnan(roles["pair/distribution/mnli_mismatched/flag_kappa"])
    # the noise floor: mean over the replicas
    assert roles["floor/errors/error_jaccard"] == pytest.approx(0.85, rel=1e-12)
    assert roles["replica/calibration/ece_uniform"] == pytest.approx(0.11, rel=1e-12)
    assert not any(REF in k or "seed" in k for k in roles), roles
    assert len(roles) == 9  # the candidate-vs-replica matrix cells have no role


def test_role_metrics_same_keys_for_any_candidate():
    a = role_metrics(metrics_of(REF, CAND), REF, [CAND])
    b = role_metrics(metrics_of("bert_base", "distilbert"), "bert_base", ["distilbert"])
    assert set(a) == set(b)


def test_role_metrics_floor_nan_aware_and_unscoped():
    floor = ("r+seed1", "r+seed2")
    metrics = {"errors/r_vs_r+seed1/flip_rate": float("nan"), "errors/r_vs_r+seed2/flip_rate": 0.2}
    metrics.update({"errors/r_vs_r+seed1/agreement": None, "errors/r_vs_r+seed2/agreement": None})
    metrics["errors/n_examples"] = 64.0  # names no model
    roles = role_metrics(metrics, "r", ["c"], floor)
    assert roles["floor/errors/flip_rate"] == 0.2
    assert math.isnan(roles["floor/errors/agreement"])
    assert roles["run/errors/n_examples"] == 64.0


def test_role_metrics_several_candidates():
    cands = ["c1", "c2"]
    metrics = {**metrics_of("r", "c1"), **metrics_of("r", "c2"), "errors/matrix/c1_vs_c2/error_jaccard": 0.3}
    metrics["calibration/c2/ece_uniform"] = 0.4
    roles = role_metrics(metrics, "r", cands)
    assert roles["candidate/calibration/ece_uniform"] == 0.2  # the first candidate's
    assert roles["candidates/c1/candidate/calibration/ece_uniform"] == 0.2
    assert roles["candidates/c2/candidate/calibration/ece_uniform"] == 0.4
    assert roles["candidates/c2/pair/errors/error_jaccard"] == 0.6
    assert not any("c1_vs_c2" in k for k in roles)


def test_verdict_metrics():
    verdict = {
        "c1": {"overall": "inconclusive", "errors": "equivalent", "calibration": "not_equivalent"},
        "c2": {"overall": "equivalent", "statistics": {"errors/flip_rate": {}}, "notes": ["x"]},
    }
    one = verdict_metrics(verdict, ["c1"])
    assert one == {
        "verdict/overall": "inconclusive",
        "verdict_code/overall": 0,
        "verdict/errors": "equivalent",
        "verdict_code/errors": 1,
        "verdict/calibration": "not_equivalent",
        "verdict_code/calibration": -1,
    }
    both = verdict_metrics(verdict, ["c1", "c2"])
    assert both["verdict/overall"] == "inconclusive" and both["candidates/c2/verdict_code/overall"] == 1
    assert "candidates/c2/verdict/statistics" not in both and "candidates/c2/verdict/notes" not in both
    assert verdict_metrics(None, ["c1"]) == {}


def test_run_config_top_level_keys():
    full = {"task": {"name": "sst2"}, "compressor": {"name": "layer_drop", "keep": "every_other"}}
    cfg = run_config(
        full, reference="r", candidates=["c+layer_drop"], characteristics=["calibration", "errors"]
    )
    assert cfg == {
        "candidate": "c+layer_drop",
        "compressor": "layer_drop",
        "reference": "r",
        "task": "sst2",
        "characteristics": "calibration,errors",
        "config": full,
    }
    listed = {"task": {"name": "t"}, "compressor": None, "candidates": [{"base": {}, "compressor": None}]}
    cfg = run_config(listed, reference="r", candidates=["a", "b"], characteristics=["errors"])
    assert cfg["compressor"] == "none" and cfg["candidates"] == ["a", "b"]


def test_wandb_mode_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == "offline"  # WANDB_MODE beats a key
    assert wandb_mode(None) == "offline"
    assert wandb_mode("online") == "online"  # an explicit mode beats WANDB_MODE
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode("auto") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode("auto") == "online"  # a key and nothing else
    monkeypatch.delenv("WANDB_API_KEY")
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "cloud")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        wandb_mode("auto")
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode"):
        wandb_mode("sometimes")


def test_model_logger_prefixes_each_fine_tuning():
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    logged, config = [], {}
    experiment = SimpleNamespace(
        log=logged.append,
        config=SimpleNamespace(update=lambda d, allow_val_change=False: config.update(d)),
        project="p",
    )
    run_logger = WandbLogger(experiment=experiment)
    view = model_logger(run_logger, "tiny_ref+seed1")
    view.log_metrics({"val/acc": 0.5}, step=3)
    view.log_hyperparams({"learning_rate": 1e-3})
    assert logged == [{"train/tiny_ref+seed1/val/acc": 0.5, "trainer/global_step": 3}]
    assert config == {"train/tiny_ref+seed1": {"learning_rate": 1e-3}}
    assert model_logger(None, "m") is False
    csv = CSVLogger("x")
    assert model_logger(csv, "m") is csv


def test_start_run_failure_is_one_line(monkeypatch, tmp_path, capsys):
    import wandb

    def refuse(**kwargs):
        raise RuntimeError(f"api key {KEY} rejected\nby the server")

    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setattr(wandb, "init", refuse)
    cfg = {"wandb": {"mode": "offline"}}
    assert tracking.start_run(cfg, save_dir=tmp_path, name="n", job_type="evaluate", config={}) is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("W&B: could not start") and " - fix: " in err
    assert KEY not in err
    assert tracking.start_run({}, save_dir=tmp_path, name="n", job_type="evaluate", config={}) is None


def test_log_evaluation_failure_keeps_going(tmp_path, capsys):
    class Broken:
        @property
        def experiment(self):
            raise ConnectionError("no network")

    tracking.log_evaluation(Broken(), tmp_path, reference="r", candidates=["c"])  # no results.json either
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("W&B: logging the evaluation failed")
        and " - fix: " in lines[0]
    )


# ------------------------------------------------------------------------------------- offline runs


def wandb_records(path: Path):
    """The protobuf records of a run's ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks of
    records with a 7-byte header: CRC, length, type), the only store of an offline run's summary and config
    in wandb >= 0.19 (no ``files/wandb-summary.json`` before ``wandb sync``)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""  # after the file header ":W&B", magic, version
    assert data.startswith(b":W&B")
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def offline_run(out_dir: Path) -> dict:
    """``{"config", "summary", "history_keys", "artifacts", "dir"}`` of the one offline run in ``out_dir``."""
    (run_dir,) = (out_dir / "wandb").glob("offline-run-*")
    config, summary, history, artifacts = {}, {}, set(), []

    def items(updates):
        for u in updates:
            yield (u.key or "/".join(u.nested_key)), json.loads(u.value_json)

    for rec in wandb_records(next(run_dir.glob("*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config.update(items(rec.run.config.update))
        elif kind == "config":
            config.update(items(rec.config.update))
        elif kind == "summary":
            summary.update(items(rec.summary.update))
        elif kind == "history":
            history.update(k for k, _ in items(rec.history.item))
        elif kind == "artifact":
            artifacts.append(rec.artifact)
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    return {
        "config": config,
        "summary": summary,
        "history_keys": history,
        "artifacts": artifacts,
        "dir": run_dir,
    }


def overrides(tmp: Path, tiny: Path, data: Path, run: str, *extra: str, candidate: str) -> list[str]:
    base = tiny_overrides(tmp, tiny, data, "train_missing=true", *extra, candidate=candidate)
    return [
        o.replace("logger=none", "logger=wandb").replace(str(tmp / "run"), str(tmp / run))
        for o in base
        if o != "trainer.max_epochs=2"
    ] + [
        "trainer.max_epochs=1",
        "callbacks.trust.enabled=false",
        *(f"{k}.n_bootstrap=50" for k in ("characteristic.calibration", "characteristic.errors", "verdict")),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, synthetic_data_dir):
    """Two offline W&B runs of one "sweep" with different candidates, WANDB_API_KEY set: ``a`` in-process
    fine-tunes the reference and its candidate for the run; ``b`` (the reference compressed) runs as a user
    runs evaluate.py and reuses the reference."""
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        env = {
            "WANDB_API_KEY": KEY,
            "WANDB_MODE": "offline",
            **{f"WANDB_{d}_DIR": str(tmp / "wandb_home" / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
        }
        for k, v in env.items():
            mp.setenv(k, v)
        a = pipeline.evaluate(
            compose("evaluate", overrides(tmp, tiny_bert, synthetic_data_dir, "run_a", candidate=OTHER))
        )
        cli = overrides(
            tmp, tiny_bert, synthetic_data_dir, "run_b", "compressor=quantize_dynamic", candidate=REF
        )
        cli = [o for o in cli if not o.startswith("paths.output_dir")] + [f"paths.log_dir={tmp / 'logs'}"]
        b = subprocess.run(
            [sys.executable, str(REPO / "evaluate.py"), *cli],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    return tmp, Path(a["output_dir"]), b


def test_offline_run_summary_config_artifact(runs):
    _, out_a, _ = runs
    run = offline_run(out_a)
    summary, config = run["summary"], run["config"]
    results = json.loads((out_a / "results.json").read_text())
    assert summary["pair/errors/error_jaccard"] == pytest.approx(
        results["metrics"][f"errors/{REF}_vs_{OTHER}/error_jaccard"], rel=1e-9
    )
    assert "reference/calibration/ece_uniform" in summary and "candidate/calibration/ece_uniform" in summary
    if results.get("verdict"):
        assert summary["verdict/overall"] in tracking.DECISION_CODES
        assert summary["verdict_code/overall"] == tracking.DECISION_CODES[summary["verdict/overall"]]
    assert not any(REF in k or OTHER in k for k in summary), sorted(summary)
    # the comparison's keys in the run config, beside the full config
    assert config["candidate"] == OTHER and config["reference"] == REF and config["compressor"] == "none"
    assert config["task"] == "sst2" and config["characteristics"] == "calibration,errors"
    assert config["config"]["task"]["name"] == "sst2"
    # both fine-tunings logged into this run, apart
    assert {f"train/{REF}/train/loss", f"train/{OTHER}/train/loss", f"train/{OTHER}/val/acc"} <= run[
        "history_keys"
    ]
    assert f"train/{REF}" in config and f"train/{OTHER}" in config  # each fine-tuning's hyperparameters
    # results.json, report.html (when written) and predictions/ as one evaluation artifact
    (artifact,) = [a for a in run["artifacts"] if a.type == "evaluation"]  # besides the tables' own
    assert artifact.type == "evaluation" and artifact.name == f"sst2-{OTHER}"
    paths = {entry.path for entry in artifact.manifest.contents}
    assert {"results.json", f"predictions/{REF}.csv", f"predictions/{OTHER}.csv"} <= paths
    assert ("report.html" in paths) == (out_a / "report.html").exists()


def test_sweep_runs_share_summary_keys_and_cli_exits_0(runs):
    _, out_a, b = runs
    assert b.returncode == 0, b.stderr[-3000:]
    assert "W&B:" not in b.stderr  # offline although a key is set: nothing to fail
    out_b = Path(b.stdout.strip().splitlines()[-1])
    run_a, run_b = offline_run(out_a), offline_run(out_b)
    assert run_b["config"]["candidate"] == f"{REF}+quantize_dynamic"
    assert run_b["config"]["compressor"] == "quantize_dynamic"
    assert set(run_a["summary"]) == set(run_b["summary"])
    assert not any(k.startswith("train/") for k in run_b["history_keys"])  # b trained nothing


def test_api_key_is_written_nowhere(runs):
    tmp, _, _ = runs
    leaks = [p for p in tmp.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks
