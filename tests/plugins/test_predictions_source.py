"""The ``predictions`` model source (plugins/sources/predictions/), the errors and calibration
characteristics on outputs without scores, and paper B's released error sets
(experiment=paper_b_squad2_errors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import DATA_DIR, compose

from plugins.characteristics.calibration import CalibrationCharacteristic
from plugins.characteristics.errors import ErrorsCharacteristic
from plugins.sources.predictions.source import PredictionsSource
from plugins.tasks.id_lists import IdListLoader
from trustequiv.data.task_kind import task_kind
from trustequiv.models.source import RunContext, build_source
from trustequiv.outputs import ModelOutputs
from trustequiv.report.run_report import write_predictions

N_BOOT = 100
LABELS = ("entailment", "neutral", "contradiction")
TASK = {"name": "toy", "kind": "classification", "label_names": list(LABELS)}
PAPER_B = DATA_DIR / "paper_b_errors"
# SOURCE.md's matrix (three decimals), upper triangle in the order large, base, distil, medium, mini, tiny.
PAPER_B_NAMES = ["bert_large", "bert_base", "distilbert", "bert_medium", "bert_mini", "bert_tiny"]
PAPER_B_MATRIX = {
    ("bert_large", "bert_base"): 0.528, ("bert_large", "distilbert"): 0.410,
    ("bert_large", "bert_medium"): 0.421, ("bert_large", "bert_mini"): 0.317,
    ("bert_large", "bert_tiny"): 0.220, ("bert_base", "distilbert"): 0.487,
    ("bert_base", "bert_medium"): 0.502, ("bert_base", "bert_mini"): 0.370,
    ("bert_base", "bert_tiny"): 0.244, ("distilbert", "bert_medium"): 0.566,
    ("distilbert", "bert_mini"): 0.477, ("distilbert", "bert_tiny"): 0.297,
    ("bert_medium", "bert_mini"): 0.470, ("bert_medium", "bert_tiny"): 0.292,
    ("bert_mini", "bert_tiny"): 0.487,
}  # fmt: skip
PAPER_B_ERRORS = {"bert_large": 2701, "bert_base": 3236, "distilbert": 4294, "bert_medium": 4026,
                  "bert_mini": 5423, "bert_tiny": 6206}  # fmt: skip
needs_paper_b = pytest.mark.skipif(not PAPER_B.is_dir(), reason=f"paper B error sets not at {PAPER_B}")


# --------------------------------------------------------------------------------------------------------
# helpers


def make_outputs(name: str, n: int = 300, seed: int = 0, noise: float = 1.0) -> ModelOutputs:
    """Synthetic 3-class outputs; the same gold labels for every model, some rows unlabelled (-1)."""
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(0, 3, (n,), generator=g)
    g.manual_seed(seed)
    logits = torch.randn(n, 3, generator=g) * noise
    logits[torch.arange(n), labels] += 1.5
    labels[::17] = -1
    return ModelOutputs(name, torch.arange(n) + 10, logits, labels, LABELS)


def split_of(out: ModelOutputs, seed: int = 1, qids: bool = False) -> datasets.Dataset:
    """The split ``out`` was made on (``id``, ``label``, optionally ``qid``), rows shuffled."""
    perm = torch.randperm(len(out), generator=torch.Generator().manual_seed(seed)).tolist()
    table = {"id": [int(out.example_ids[i]) for i in perm], "label": [int(out.labels[i]) for i in perm]}
    if qids:
        table["qid"] = [f"q{int(out.example_ids[i]):05x}" for i in perm]
    return datasets.Dataset.from_dict(table)


def ctx_for(task_cfg: dict, dataset=None) -> RunContext:
    return RunContext(
        task_cfg=task_cfg,
        kind=task_kind(task_cfg),
        cache=None,
        trainer_cfg={},
        predict_cfg={},
        models_dir="",
        memo_file=Path("unused"),
        dataset=lambda: dataset,
    )


def read_back(path: Path, data, task_cfg=TASK, name: str = "m", full=None, **cfg) -> ModelOutputs:
    """``data``'s outputs read from ``path``; ``full``: the whole split ``data`` was sampled from."""
    source = PredictionsSource({"source": "predictions", "name": name, "path": str(path), **cfg})
    ctx = ctx_for(task_cfg, datasets.DatasetDict({"test": data if full is None else full}))
    source.prepare(ctx)
    out, cached = source.outputs(data, task_cfg, "test", ctx)
    assert cached is False
    return out


def without_scores(out: ModelOutputs) -> ModelOutputs:
    """The same model as an error set: correctness only (unlabelled rows count as correct)."""
    correct = (out.predictions == out.labels) | (out.labels < 0)
    return ModelOutputs(out.name, out.example_ids, None, out.labels, out.label_names, correct=correct)


def approx_metrics(got: dict, want: dict, abs_tol: float) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=abs_tol, nan_ok=True), k


# --------------------------------------------------------------------------------------------------------
# round trip: write_predictions -> PredictionsSource


def test_round_trip_gives_the_same_calibration_and_errors(tmp_path: Path) -> None:
    ref, cand = make_outputs("bert"), make_outputs("mini", seed=1, noise=2.0)
    data = split_of(ref)
    back = {}
    for out in (ref, cand):
        write_predictions(out, tmp_path / f"{out.name}.csv")
        back[out.name] = read_back(tmp_path / f"{out.name}.csv", data, name=out.name)
    r2, c2 = back["bert"], back["mini"]
    assert r2.example_ids.tolist() == list(data["id"])  # data's order
    assert r2.has_scores and r2.label_names == LABELS and r2.correct is None
    orig = ref.select(r2.example_ids)
    assert torch.equal(r2.labels, orig.labels)
    # 6 decimals in the CSV: probabilities agree to 5e-7, after renormalisation to ~2e-6
    assert torch.allclose(r2.probs, orig.probs, atol=3e-6)
    assert torch.equal(r2.predictions, orig.predictions)

    # the same row order (bootstrap resamples are drawn by row position)
    ref, cand = orig, cand.select(r2.example_ids)
    cal, err = CalibrationCharacteristic(n_bootstrap=N_BOOT), ErrorsCharacteristic(n_bootstrap=N_BOOT)
    approx_metrics(cal.evaluate(r2, [c2]).metrics, cal.evaluate(ref, [cand]).metrics, abs_tol=1e-5)
    got, want = err.evaluate(r2, [c2]).metrics, err.evaluate(ref, [cand]).metrics
    approx_metrics(got, want, abs_tol=1e-5)
    discrete = [k for k in want if not k.endswith("js_distance")]
    assert {k: got[k] for k in discrete} == {k: want[k] for k in discrete}  # correctness is exact


def test_round_trip_of_an_error_set_output(tmp_path: Path) -> None:
    ref, cand = without_scores(make_outputs("bert")), without_scores(make_outputs("mini", seed=1, noise=2.0))
    data = split_of(ref)
    for out in (ref, cand):
        write_predictions(out, tmp_path / f"{out.name}.csv")  # example_id, gold_label, correct
    r2 = read_back(tmp_path / "bert.csv", data, name="bert")
    c2 = read_back(tmp_path / "mini.csv", data, name="mini")
    assert not r2.has_scores and torch.equal(r2.correct, ref.select(r2.example_ids).correct)
    err = ErrorsCharacteristic(n_bootstrap=N_BOOT)
    same_order = ref.select(r2.example_ids), cand.select(r2.example_ids)
    assert err.evaluate(r2, [c2]).metrics == err.evaluate(same_order[0], [same_order[1]]).metrics


def test_round_trip_keeps_qa_columns(tmp_path: Path) -> None:
    task = {"name": "qa_toy", "kind": "extractive_qa", "label_names": ["no_answer", "answer"]}
    kind = task_kind(task)
    n = 40
    g = torch.Generator().manual_seed(0)
    exact = (torch.rand(n, generator=g) > 0.4).long()
    out = ModelOutputs(
        "qa",
        torch.arange(n),
        torch.randn(n, 2, generator=g),
        torch.randint(0, 2, (n,), generator=g),
        ("no_answer", "answer"),
        correct=exact.bool(),
        columns={
            "prediction": [f"{1900 + i}" if i % 3 else "" for i in range(n)],  # numeric-looking answers
            "exact": exact.tolist(),
            "f1": [round(float(x), 6) for x in torch.rand(n, generator=g)],
        },
    )
    write_predictions(out, tmp_path / "qa.csv", kind.csv_columns)
    data = datasets.Dataset.from_dict({"id": list(range(n))[::-1]})  # QA data has no label column
    back = read_back(tmp_path / "qa.csv", data, task_cfg=task, name="qa")
    orig = out.select(back.example_ids)
    assert torch.equal(back.labels, orig.labels)  # from the file's gold_label
    assert torch.equal(back.correct, orig.correct)  # from exact
    assert back.columns["prediction"] == orig.columns["prediction"]  # strings stay strings
    assert back.columns["exact"] == orig.columns["exact"]
    assert back.columns["f1"] == pytest.approx(orig.columns["f1"], abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# the CSV format


P_COLS = [f"p_{c}" for c in LABELS]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n")
    return path


def test_any_column_order_and_class_order(tmp_path: Path) -> None:
    rows = [[7, "neutral", 0.2, 0.7, 0.1], [3, "", 0.5, 0.0, 0.5], [5, "contradiction", 0.1, 0.1, 0.8]]
    path = write_csv(tmp_path / "p.csv", ["example_id", "gold_label", "p_contradiction", "p_neutral",
                                          "p_entailment"], rows)  # fmt: skip
    data = datasets.Dataset.from_dict({"id": [5, 7], "label": [2, 1]})
    out = read_back(path, data)
    assert out.example_ids.tolist() == [5, 7] and out.labels.tolist() == [2, 1]
    assert out.probs.numpy() == pytest.approx(np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2]]), abs=1e-6)
    zero = read_back(path, datasets.Dataset.from_dict({"id": [3], "label": [-1]}))
    assert torch.isfinite(zero.logits).all() and zero.probs[0, 1] < 1e-6  # p = 0 read as prob_floor


def test_missing_ids_are_an_error_naming_count_and_file(tmp_path: Path) -> None:
    out = make_outputs("bert", n=20)
    write_predictions(out, tmp_path / "bert.csv")
    data = datasets.Dataset.from_dict({"id": [10, 11, 500, 501, 502], "label": [0, 0, 0, 0, 0]})
    with pytest.raises(
        ValueError, match=r"bert\.csv: 3 of 5 examples of toy/test have no row \(first ids: 500"
    ):
        read_back(tmp_path / "bert.csv", data)


def test_gold_labels_must_agree_with_the_split(tmp_path: Path) -> None:
    out = make_outputs("bert", n=20)
    write_predictions(out, tmp_path / "bert.csv")
    data = split_of(out)
    flipped = [(y + 1) % 3 if y >= 0 else y for y in data["label"]]
    bad = data.remove_columns("label").add_column("label", flipped)
    with pytest.raises(ValueError, match=r"gold labels of \d+ of 20 examples disagree with toy/test"):
        read_back(tmp_path / "bert.csv", bad)


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        (["example_id", "p_yes", "p_no", "p_maybe"], [1, 0.2, 0.3, 0.5], r"p_ columns name classes"),
        (["example_id", *P_COLS], [1, 2.0, -1.0, 0.5], "summing to 1"),
        (["id", *P_COLS], [1, 0.2, 0.3, 0.5], "no example_id column"),
        (["example_id", "gold_label"], [1, "neutral"], "no p_<class> columns"),
        (["example_id", "gold_label", *P_COLS], [1, "maybe", 0.2, 0.3, 0.5], r"gold labels \['maybe'\]"),
    ],
)  # fmt: skip
def test_malformed_csv_is_an_error(tmp_path: Path, header, row, match) -> None:
    path = write_csv(tmp_path / "p.csv", header, [row])
    with pytest.raises(ValueError, match=match):
        read_back(path, datasets.Dataset.from_dict({"id": [1], "label": [0]}))


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"set model\.path="):
        PredictionsSource({"source": "predictions", "name": "x"})
    with pytest.raises(ValueError, match="use letters, digits"):
        PredictionsSource({"path": "a.csv", "name": "bad/name"})
    with pytest.raises(ValueError, match="no model to compress"):
        PredictionsSource({"path": "a.csv"}, {"name": "layer_drop"})
    with pytest.raises(ValueError, match="ids must be one of"):
        PredictionsSource({"path": "a.csv", "ids": "rows"})
    assert PredictionsSource({"path": "runs/x/distilbert.csv"}).name == "distilbert"  # the file's stem
    source = PredictionsSource({"path": str(tmp_path / "nope.csv"), "name": "m"})
    with pytest.raises(FileNotFoundError, match=r"model m: path file not found: .*nope\.csv"):
        source.prepare(ctx_for(TASK))
    (tmp_path / "p.parquet").write_text("")
    with pytest.raises(ValueError, match=r"neither a predictions CSV \(\.csv\) nor an error-set"):
        PredictionsSource({"path": str(tmp_path / "p.parquet")}).prepare(ctx_for(TASK))


def test_built_from_the_model_config(tmp_path: Path) -> None:
    path = tmp_path / "from_elsewhere.csv"
    write_predictions(make_outputs("bert", n=10), path)
    cfg = compose("evaluate", ["model=predictions", f"model.path={path}", "model@reference=predictions",
                               f"reference.path={path}", "reference.name=ref", "logger=none"])  # fmt: skip
    cand, ref = build_source(cfg.model, cfg.get("compressor")), build_source(cfg.reference)
    assert isinstance(cand, PredictionsSource) and cand.name == "from_elsewhere" and ref.name == "ref"
    assert cand.provides == frozenset() and cand.handle(ctx_for(TASK)) is None


def test_prepare_fingerprints_the_files(tmp_path: Path) -> None:
    out = make_outputs("bert", n=10)
    write_predictions(out, tmp_path / "a.csv")
    source = PredictionsSource({"path": str(tmp_path / "a.csv")})
    ident = source.prepare(ctx_for(TASK))
    assert ident["source"] == "predictions" and ident["path"].endswith("a.csv")
    assert re.fullmatch(r"[0-9a-f]{64}", ident["fingerprint"])
    assert ident["metadata"]["format"] == "csv"
    assert (
        ident["metadata"]["files"]["path"]["sha256"]
        == __import__("hashlib").sha256((tmp_path / "a.csv").read_bytes()).hexdigest()
    )
    write_predictions(make_outputs("bert", n=10, seed=3), tmp_path / "a.csv")
    again = PredictionsSource({"path": str(tmp_path / "a.csv")}).prepare(ctx_for(TASK))
    assert again["fingerprint"] != ident["fingerprint"]


# --------------------------------------------------------------------------------------------------------
# error sets, embeddings, OOD sets


def test_error_set_with_string_ids(tmp_path: Path) -> None:
    out = make_outputs("bert", n=30)
    full = split_of(out, qids=True)
    wrong = [q for q, i in zip(full["qid"], full["id"], strict=True) if i % 4 == 0]
    path = tmp_path / "errors.json"
    path.write_text(json.dumps(wrong))
    sample = full.select(range(10))  # a limit_examples sample: ids outside it are fine
    got = read_back(path, sample, name="elsewhere", full=full)
    assert not got.has_scores and got.logits is None
    assert got.correct.tolist() == [i % 4 != 0 for i in sample["id"]]
    assert got.labels.tolist() == list(sample["label"])
    path.write_text(json.dumps([*wrong, "not-a-question"]))
    with pytest.raises(ValueError, match=r"errors\.json: 1 of \d+ ids are not examples of toy/test"):
        read_back(path, sample, full=full)


def test_embeddings_npy_and_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    out = make_outputs("bert", n=12)
    write_predictions(out, tmp_path / "p.csv")
    ids = np.arange(10, 22)[::-1]
    emb = np.stack([np.full(4, i, dtype=np.float32) for i in ids])  # row = its id, easy to check
    data = split_of(out)
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "e.ids.txt").write_text("\n".join(str(i) for i in ids))
    got = read_back(tmp_path / "p.csv", data, embeddings=str(tmp_path / "e.npy"))
    assert got.embeddings.dtype == torch.float32 and got.embeddings[:, 0].tolist() == list(data["id"])
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    got = read_back(tmp_path / "p.csv", data, embeddings=str(tmp_path / "e.npy"),
                    embedding_ids=str(tmp_path / "ids.json"))  # fmt: skip
    assert got.embeddings[:, 0].tolist() == list(data["id"])
    save_file({"example_id": ids.astype(np.int64), "embeddings": emb}, str(tmp_path / "e.safetensors"))
    got = read_back(tmp_path / "p.csv", data, embeddings=str(tmp_path / "e.safetensors"))
    assert got.embeddings[:, 0].tolist() == list(data["id"])
    save_file(
        {"example_id": ids[:5].astype(np.int64), "embeddings": emb[:5]}, str(tmp_path / "s.safetensors")
    )
    with pytest.raises(ValueError, match=r"s\.safetensors: 7 of 12 examples of toy/test have no row"):
        read_back(tmp_path / "p.csv", data, embeddings=str(tmp_path / "s.safetensors"))
    np.save(tmp_path / "lone.npy", emb)
    with pytest.raises(FileNotFoundError, match=r"set model.embedding_ids=<file>"):
        read_back(tmp_path / "p.csv", data, embeddings=str(tmp_path / "lone.npy"))


def test_ood_sets_have_their_own_files(tmp_path: Path) -> None:
    main, ood = make_outputs("bert", n=10), make_outputs("bert", n=6, seed=5)
    write_predictions(main, tmp_path / "main.csv")
    write_predictions(ood, tmp_path / "ood.csv")
    source = PredictionsSource(
        {"path": str(tmp_path / "main.csv"), "ood": {"other/ood_test": str(tmp_path / "ood.csv")}}
    )
    ctx = ctx_for(TASK)
    source.prepare(ctx)
    other = {**TASK, "name": "other"}
    got, _ = source.outputs(split_of(ood), other, "ood_test", ctx)
    assert torch.allclose(got.probs, ood.select(got.example_ids).probs, atol=3e-6)
    with pytest.raises(ValueError, match=r"no predictions for the OOD set third/test; add model.ood="):
        source.outputs(split_of(ood), {**TASK, "name": "third"}, "test", ctx)
    nested = PredictionsSource(
        {
            "path": str(tmp_path / "main.csv"),
            "ood": {"qa/other/ood_test": {"path": str(tmp_path / "ood.csv")}},
        }
    )
    assert len(nested.outputs(split_of(ood), other, "ood_test", ctx)[0]) == 6


# --------------------------------------------------------------------------------------------------------
# characteristics on outputs without scores


def test_calibration_refuses_outputs_without_scores() -> None:
    cal = CalibrationCharacteristic(n_bootstrap=N_BOOT)
    es, scored = without_scores(make_outputs("bert")), make_outputs("mini", seed=1)
    for call in (
        lambda: cal.per_model(es),
        lambda: cal.compare(scored, es),
        lambda: cal.summarize([scored, es]),
    ):
        with pytest.raises(
            ValueError, match=r"^calibration needs per-example probabilities; bert: only which"
        ) as e:
            call()
        assert "\n" not in str(e.value)
    assert cal.needs_scores and not ErrorsCharacteristic.needs_scores


def test_errors_from_correctness_only_match_the_scored_numbers() -> None:
    err = ErrorsCharacteristic(n_bootstrap=N_BOOT)
    outs = [make_outputs("bert"), make_outputs("mini", seed=1), make_outputs("tiny", seed=2, noise=2.0)]
    labelled = [o.select(o.example_ids[o.labels >= 0]) for o in outs]  # error sets count every row
    scored = err.evaluate(labelled[0], labelled[1:])
    bare = err.evaluate(without_scores(labelled[0]), [without_scores(o) for o in labelled[1:]])
    left_out = ("agreement", "agreement_ci_low", "agreement_ci_high", "cohen_kappa", "js_distance")
    kept = {k: v for k, v in scored.metrics.items() if not k.endswith(left_out)}
    assert bare.metrics == {**kept, **{k: v for k, v in bare.metrics.items() if k.startswith("matrix/")}}
    assert {k for k in bare.metrics if k.startswith("matrix/")} == {
        f"matrix/{a}_vs_{b}/error_jaccard{s}"
        for a, b in (("bert", "mini"), ("bert", "tiny"), ("mini", "tiny"))
        for s in ("", "_ci_low", "_ci_high")
    }
    assert bare.metrics["matrix/bert_vs_mini/error_jaccard"] == scored.metrics["bert_vs_mini/error_jaccard"]
    assert (
        scored.metrics["matrix/mini_vs_tiny/error_jaccard"]
        == bare.metrics["matrix/mini_vs_tiny/error_jaccard"]
    )
    assert set(bare.tables) == {"error_jaccard_matrix"} and "agreement_matrix" in scored.tables
    assert any("no agreement, Cohen's kappa or JS distance" in n for n in bare.notes)
    mixed = err.compare(labelled[0], without_scores(labelled[1])).metrics  # one scored, one not
    assert mixed["bert_vs_mini/error_jaccard"] == scored.metrics["bert_vs_mini/error_jaccard"]
    assert "bert_vs_mini/agreement" not in mixed


# --------------------------------------------------------------------------------------------------------
# paper B (real data)

PAPER_B_ARGS = ["experiment=paper_b_squad2_errors", f"paths.data_dir={DATA_DIR}", "logger=none",
                f"characteristic.errors.n_bootstrap={N_BOOT}"]  # fmt: skip


@needs_paper_b
def test_paper_b_matrix_from_the_released_error_sets() -> None:
    from trustequiv.plain import plain
    from trustequiv.run.plan import build_characteristics, model_sources

    cfg = compose("evaluate", [*PAPER_B_ARGS, "paths.output_dir=unused"])
    task_cfg = plain(cfg.task)
    dataset = task_kind(task_cfg).load_data(task_cfg, str(DATA_DIR))
    data = dataset[task_cfg["eval_split"]]
    assert len(data) == 11873 and data.column_names == ["id", "qid", "label"]
    ctx = ctx_for(task_cfg, dataset)
    reference, candidates = model_sources(cfg)
    outs = []
    for source in (reference, *candidates):
        assert source.prepare(ctx)["metadata"]["format"] == "error_set"
        outs.append(source.outputs(data, task_cfg, "test", ctx)[0])
    assert [o.name for o in outs] == PAPER_B_NAMES
    (err,) = build_characteristics(cfg)
    res = err.evaluate(outs[0], outs[1:])
    m = res.metrics
    for name, n_errors in PAPER_B_ERRORS.items():
        assert m[f"{name}/n_errors"] == n_errors and m[f"{name}/n_examples"] == 11873
    assert m["bert_large/accuracy"] == pytest.approx(1 - 2701 / 11873)
    rows = {r["model"]: r for r in res.tables["error_jaccard_matrix"]}
    for (a, b), want in PAPER_B_MATRIX.items():
        got = m[f"matrix/{a}_vs_{b}/error_jaccard"]
        assert round(got, 3) == want and rows[a][b] == rows[b][a] == got, (a, b)
        assert (
            m[f"matrix/{a}_vs_{b}/error_jaccard_ci_low"] < got < m[f"matrix/{a}_vs_{b}/error_jaccard_ci_high"]
        )
        if a == "bert_large":
            assert m[f"bert_large_vs_{b}/error_jaccard"] == got
    assert "bert_large_vs_bert_base/agreement" not in m


@needs_paper_b
def test_paper_b_jaccard_does_not_depend_on_the_universe() -> None:
    union = IdListLoader("paper_b_errors").load(str(DATA_DIR))["test"]
    assert len(union) == 9182
    files = {"bert_large": "bert_large.json", "bert_tiny": "tiny_bert.json"}
    task = {"name": "paper_b_squad2", "kind": "classification", "label_names": ["no_answer", "answer"]}
    ctx = ctx_for(task, datasets.DatasetDict({"test": union}))
    outs = []
    for name, file in files.items():
        source = PredictionsSource({"name": name, "path": str(PAPER_B / file)})
        outs.append(source.outputs(union, task, "test", ctx)[0])
    m = ErrorsCharacteristic(n_bootstrap=N_BOOT).compare(*outs).metrics
    assert round(m["bert_large_vs_bert_tiny/error_jaccard"], 3) == 0.220
    with pytest.raises(ValueError, match="more than universe_size=100"):
        IdListLoader("paper_b_errors", universe_size=100).load(str(DATA_DIR))


@needs_paper_b
def test_paper_b_needs_the_official_question_ids() -> None:
    """The local SQuAD 2.0 file (CS224n half) has regenerated ids: the error sets do not fit it."""
    if not (DATA_DIR / "squad2").is_dir():
        pytest.skip("no local squad2")
    from plugins.tasks.squad import read_squad_json

    rows = read_squad_json(DATA_DIR / "squad2" / "dev-v2.0.cs224n-half.json")
    data = datasets.Dataset.from_dict({"id": [r["id"] for r in rows], "qid": [r["qid"] for r in rows]})
    task = {"name": "squad2", "kind": "classification", "label_names": ["no_answer", "answer"]}
    with pytest.raises(ValueError, match=r"2701 of 2701 ids are not examples of squad2/test"):
        read_back(PAPER_B / "bert_large.json", data, task_cfg=task)


@needs_paper_b
def test_paper_b_pipeline_end_to_end(tmp_path: Path) -> None:
    from trustequiv.run.pipeline import evaluate

    cfg = compose("evaluate", [*PAPER_B_ARGS, f"paths.output_dir={tmp_path / 'run'}",
                               f"paths.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    evaluate(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = results["metrics"]
    for (a, b), want in PAPER_B_MATRIX.items():
        assert round(metrics[f"errors/matrix/{a}_vs_{b}/error_jaccard"], 3) == want
        assert metrics[f"errors/matrix/{a}_vs_{b}/error_jaccard_ci_low"] is not None
        if a == "bert_large":
            assert round(metrics[f"errors/bert_large_vs_{b}/error_jaccard"], 3) == want
    assert results["reference"] == "bert_large" and results["candidates"] == PAPER_B_NAMES[1:]
    assert (tmp_path / "run" / "predictions" / "bert_large.csv").exists()
