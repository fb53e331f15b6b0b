"""Task loaders (plugins.tasks) against the real files of shared/data, a faked hub, and the task configs."""

import os
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from plugins.tasks import TextClassificationLoader
from plugins.tasks.formats import imdb_id
from trustequiv.user_errors import LabelMismatchError

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "conf" / "task"
# the text-classification tasks (paper_b_squad2 is an id list for predictions made elsewhere)
TASKS = sorted(p.stem for p in TASK_DIR.glob("*.yaml") if "glue.TextClassificationLoader" in p.read_text())
CONTRACT_KEYS = {
    "name",
    "kind",
    "label_names",
    "pair",
    "eval_split",
    "extra_splits",
    "ood",
    "max_length",
    "training",
    "loader",
}
TRAINING_KEYS = {"epochs", "learning_rate", "batch_size", "warmup_ratio", "weight_decay"}
G = 1_000_000_000


def _data_dir() -> Path:
    return Path(os.environ.get("TRUSTEQUIV_DATA_DIR", REPO / ".." / "shared" / "data")).resolve()


def _cfg(task):
    return OmegaConf.load(TASK_DIR / f"{task}.yaml")


def _load(task, data_dir):
    cfg = _cfg(task)
    return instantiate(cfg.loader).load(
        None if data_dir is None else str(data_dir), label_names=list(cfg.label_names)
    )


@pytest.fixture(scope="module")
def data_dir():
    d = _data_dir()
    if not d.is_dir():
        pytest.skip(
            f"data folder {d} not found; set TRUSTEQUIV_DATA_DIR to a folder laid out like shared/data"
        )
    return d


@pytest.fixture(scope="module")
def local(data_dir):
    """Each task loaded once per test session (IMDB reads its 33 MB file once)."""
    cache = {}

    def get(task):
        if task not in cache:
            cache[task] = _load(task, data_dir)
        return cache[task]

    return get


def _counts(dd, names, splits=None):
    c = Counter()
    for s in splits or dd:
        c.update(np.asarray(dd[s]["label"]).tolist())
    return {names[k]: v for k, v in c.items()}


def _check_contract(dd, task):
    cfg = _cfg(task)
    cols = ["id", "text_a", "text_b", "label"] if cfg.pair else ["id", "text_a", "label"]
    ids = []
    for split, ds in dd.items():
        assert ds.column_names == cols, split
        assert ds.features["id"].dtype == "int64" and ds.features["label"].dtype == "int64"
        assert ds.features["text_a"].dtype == "string"
        labels = np.asarray(ds["label"])
        assert ((labels >= -1) & (labels < len(cfg.label_names))).all()
        ids.append(np.asarray(ds["id"]))
    ids = np.concatenate(ids)
    assert len(np.unique(ids)) == len(ids), "ids must be unique across all splits"
    optional = {
        name
        for spec in (cfg.loader.hub, cfg.loader.local)
        if spec is not None
        for name, src in (spec.get("splits") or {}).items()
        if src.get("optional")
    }
    for split in [cfg.eval_split, *cfg.extra_splits]:
        assert split in dd or split in optional


# ----------------------------------------------------------------------------- local files


def test_mrpc_local(local):
    dd = local("mrpc")
    _check_contract(dd, "mrpc")
    assert {k: len(v) for k, v in dd.items()} == {"train": 3668, "validation": 408, "test": 1725}
    names = ["not_equivalent", "equivalent"]
    assert _counts(dd, names, ["train"]) == {"equivalent": 2474, "not_equivalent": 1194}
    assert _counts(dd, names, ["validation"]) == {"equivalent": 279, "not_equivalent": 129}
    assert _counts(dd, names, ["test"]) == {"equivalent": 1147, "not_equivalent": 578}
    first = dd["train"][0]
    assert (
        first["text_a"].startswith("Amrozi accused his brother") and first["label"] == 1 and first["id"] == 0
    )
    # lone quote kept: the files are not CSV-quoted
    assert dd["validation"][0]["text_b"].startswith('"The foodservice pie business')
    assert dd["test"][0]["id"] == 2 * G


def test_sst2_local(local):
    dd = local("sst2")
    _check_contract(dd, "sst2")
    assert len(dd["train"]) + len(dd["validation"]) == 67_349
    assert 0.08 < len(dd["validation"]) / 67_349 < 0.12
    assert _counts(dd, ["negative", "positive"], ["train", "validation"]) == {
        "negative": 29_780,
        "positive": 37_569,
    }
    assert _counts(dd, ["negative", "positive"], ["test"]) == {"negative": 428, "positive": 444}
    assert dd["test"][0] == {"id": G, "text_a": "it 's a charming and often affecting journey . ", "label": 1}


def test_rte_local(local):
    dd = local("rte")
    _check_contract(dd, "rte")
    names = ["entailment", "not_entailment"]
    assert len(dd["train"]) + len(dd["validation"]) == 2490
    assert _counts(dd, names, ["train", "validation"]) == {"entailment": 1249, "not_entailment": 1241}
    assert len(dd["test"]) == 277
    assert _counts(dd, names, ["test"]) == {"entailment": 146, "not_entailment": 131}
    row0 = dd["test"][0]
    assert row0["text_a"].startswith("Dana Reeve") and row0["label"] == 1 and row0["id"] == G
    # CSV quoting undone: no field keeps the wrapping quotes, doubled inner quotes are single again
    texts = list(dd["test"]["text_a"]) + list(dd["test"]["text_b"])
    quoted = [t for t in texts if '"' in t]
    assert quoted and not any('""' in t for t in quoted)


def test_mnli_local(local):
    dd = local("mnli")
    _check_contract(dd, "mnli")
    names = ["entailment", "neutral", "contradiction"]
    sizes = {k: len(v) for k, v in dd.items()}
    assert sizes["train"] + sizes["validation"] + sizes["test"] == 9815
    for split, frac in {"train": 0.7, "validation": 0.1, "test": 0.2}.items():
        assert abs(sizes[split] / 9815 - frac) < 0.02
    assert _counts(dd, names, ["train", "validation", "test"]) == {
        "entailment": 3479,
        "contradiction": 3213,
        "neutral": 3123,
    }
    assert sizes["test_mismatched"] == 1000
    assert _counts(dd, names, ["test_mismatched"]) == {
        "entailment": 346,
        "contradiction": 335,
        "neutral": 319,
    }
    # dev_matched `index` 0 has id 1e9 + 0, as the hub's validation_matched idx 0
    all_rows = datasets.concatenate_datasets([dd["train"], dd["validation"], dd["test"]])
    row = all_rows[int(np.flatnonzero(np.asarray(all_rows["id"]) == G)[0])]
    assert row["text_a"] == "The new rights are nice enough" and row["label"] == names.index("neutral")
    assert row["text_b"] == "Everyone really likes the newest benefits "


def test_snli_local(local):
    dd = local("snli")
    _check_contract(dd, "snli")
    assert sum(len(v) for v in dd.values()) == 1000
    assert _counts(dd, ["entailment", "neutral", "contradiction"]) == {
        "entailment": 367,
        "neutral": 322,
        "contradiction": 311,
    }


def test_paws_qqp_local(local):
    dd = local("paws_qqp")
    _check_contract(dd, "paws_qqp")
    assert list(dd) == ["test"] and len(dd["test"]) == 677
    assert _counts(dd, ["not_duplicate", "duplicate"]) == {"not_duplicate": 486, "duplicate": 191}
    row = dd["test"][0]
    assert row["text_a"].startswith("What were the major effects of the cambodia earthquake")
    assert not any(
        t.startswith(("b'", 'b"')) for t in list(dd["test"]["text_a"]) + list(dd["test"]["text_b"])
    )


def test_imdb_local(local):
    dd = local("imdb")
    _check_contract(dd, "imdb")
    assert sum(len(v) for v in dd.values()) == 24_999
    assert _counts(dd, ["negative", "positive"]) == {"negative": 12_500, "positive": 12_499}
    ids = np.concatenate([np.asarray(v["id"]) for v in dd.values()])
    assert 2 * G + 1_000_000 in ids and 2 * G + 1_000_000 + 7 not in ids  # test/pos/0 present, pos/7 missing
    assert imdb_id("test/neg/12") == 12 and imdb_id("test/pos/12") == 1_000_012
    with pytest.raises(ValueError):
        imdb_id("test/unsup/1")


def test_advglue_local(local):
    """AdvGLUE dev rows as extra splits, counts and label coding as shared/data/advglue/SOURCE.md measured."""
    sst2 = local("sst2")["test_advglue"]
    assert len(sst2) == 148
    assert _counts({"a": sst2}, ["negative", "positive"]) == {"positive": 76, "negative": 72}
    assert sst2[0]["id"] == 4 * G and sst2[0]["text_a"].startswith("it 's an uneven treat")
    mnli = local("mnli")
    names = ["entailment", "neutral", "contradiction"]
    assert _counts({"a": mnli["test_advglue"]}, names) == dict(contradiction=50, neutral=39, entailment=32)
    assert _counts({"a": mnli["test_advglue_mm"]}, names) == dict(entailment=60, contradiction=57, neutral=45)
    assert len(local("rte")["test_advglue"]) == 81


def test_optional_split_missing_is_skipped(tmp_path):
    _tiny_sst2(tmp_path, "fine . \t1\nbad . \t0\n")  # no advglue/dev.json
    dd = _load("sst2", tmp_path)
    assert "test_advglue" not in dd and "test" in dd


def test_advglue_reader_errors(tmp_path):
    _tiny_sst2(tmp_path, "fine . \t1\nbad . \t0\n")
    _write(tmp_path / "advglue" / "dev.json", '{"qqp": []}')
    with pytest.raises(ValueError, match="sst2"):
        _load("sst2", tmp_path)
    _write(tmp_path / "advglue" / "dev.json", '{"sst2": [{"idx": 0, "label": 1}]}')
    with pytest.raises(ValueError, match=r"sst2\[0\]"):
        _load("sst2", tmp_path)


def test_local_splits_are_reproducible(data_dir, local):
    again = _load("rte", data_dir)
    for split in ("train", "validation"):
        assert list(again[split]["id"]) == list(local("rte")[split]["id"])


def test_qqp_local_missing_names_path_and_fix(data_dir):
    with pytest.raises(FileNotFoundError) as err:
        _load("qqp", data_dir)
    msg = str(err.value)
    assert str(data_dir / "qqp") in msg and "paths.data_dir" in msg and "hub" in msg


def test_missing_file_message_contains_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        _load("mrpc", tmp_path)
    assert str(tmp_path / "mrpc" / "train.tsv") in str(err.value)
    assert "paths.data_dir" in str(err.value)


def test_paws_qqp_has_no_hub_source():
    with pytest.raises(FileNotFoundError, match=r"paths\.data_dir"):
        _load("paws_qqp", None)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tiny_sst2(tmp_path, train_body, dev_body="good . \t1\n"):
    _write(tmp_path / "sst2" / "train.tsv", "sentence\tlabel\n" + train_body)
    _write(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel\n" + dev_body)


def test_unknown_label_value_names_file_row_value(tmp_path):
    _tiny_sst2(tmp_path, "fine . \t1\nbad . \t0\nodd . \t7\n")
    with pytest.raises(ValueError) as err:
        _load("sst2", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "sst2" / "train.tsv") in msg and "row 3" in msg and "'7'" in msg


def test_bad_field_count_and_header(tmp_path):
    _tiny_sst2(tmp_path, "fine . \t1\textra\n")
    with pytest.raises(ValueError, match=r"line 2.*fields"):
        _load("sst2", tmp_path)
    _write(tmp_path / "sst2" / "train.tsv", "text\tlabel\nfine . \t1\n")
    with pytest.raises(ValueError, match="header"):
        _load("sst2", tmp_path)


# ----------------------------------------------------------------------------- hub (faked)


def _fake_hub(monkeypatch, builder):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        return builder(*args)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def _nli_split(names, labels, start=0):
    feats = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=names),
            "idx": datasets.Value("int32"),
        }
    )
    n = len(labels)
    return datasets.Dataset.from_dict(
        {
            "premise": [f"p{start + i}" for i in range(n)],
            "hypothesis": [f"h{start + i}" for i in range(n)],
            "label": labels,
            "idx": list(range(n)),
        },
        features=feats,
    )


HUB_ORDER = [
    "contradiction",
    "entailment",
    "neutral",
]  # differs from canonical entailment/neutral/contradiction


def _fake_mnli(names):
    def build(*args):
        return datasets.DatasetDict(
            {
                "train": _nli_split(names, [i % 3 for i in range(60)]),
                "validation_matched": _nli_split(names, [0, 1, 2, 0], start=100),
                "validation_mismatched": _nli_split(names, [2, 2, 1], start=200),
                "test_matched": _nli_split(names, [-1, -1], start=300),
            }
        )

    return build


def test_hub_mnli_remaps_labels_by_name(monkeypatch):
    calls = _fake_hub(monkeypatch, _fake_mnli(HUB_ORDER))
    dd = _load("mnli", None)
    # the task, then AdvGLUE's optional splits (absent from the fake, so skipped)
    assert calls == [
        ("nyu-mll/glue", "mnli"),
        ("AI-Secure/adv_glue", "adv_mnli"),
        ("AI-Secure/adv_glue", "adv_mnli_mismatched"),
    ]
    assert "test_advglue" not in dd
    assert list(dd) == ["train", "validation", "test", "test_mismatched"]
    _check_contract(dd, "mnli")
    canonical = ["entailment", "neutral", "contradiction"]
    # validation_matched hub labels [0,1,2,0] = contradiction, entailment, neutral, contradiction
    assert list(dd["test"]["label"]) == [
        canonical.index(n) for n in ["contradiction", "entailment", "neutral", "contradiction"]
    ]
    assert list(dd["test"]["text_a"]) == ["p100", "p101", "p102", "p103"]
    assert list(dd["test"]["id"]) == [G, G + 1, G + 2, G + 3]
    assert list(dd["test_mismatched"]["id"]) == [2 * G, 2 * G + 1, 2 * G + 2]
    assert len(dd["train"]) + len(dd["validation"]) == 60
    assert len(dd["validation"]) > 0
    for row in dd["train"]:
        assert canonical[row["label"]] == HUB_ORDER[int(row["text_a"][1:]) % 3]


def test_hub_unmatched_names_raise(monkeypatch):
    _fake_hub(monkeypatch, _fake_mnli(["yes", "maybe", "no"]))
    with pytest.raises(LabelMismatchError) as err:
        _load("mnli", None)
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "yes" in msg and "entailment" in msg


def test_hub_generic_names_raise(monkeypatch):
    _fake_hub(monkeypatch, _fake_mnli(["LABEL_0", "LABEL_1", "LABEL_2"]))
    with pytest.raises(LabelMismatchError, match="no label names"):
        _load("mnli", None)


def _single(names, labels, text="text"):
    feats = datasets.Features({text: datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {text: [f"t{i}" for i in range(len(labels))], "label": labels}, features=feats
    )


def test_hub_imdb_aliases_neg_pos(monkeypatch):
    calls = _fake_hub(
        monkeypatch,
        lambda *a: datasets.DatasetDict(
            {
                "train": _single(["neg", "pos"], [0, 1] * 20),
                "test": _single(["neg", "pos"], [1, 1, 0]),
                "unsupervised": _single(["neg", "pos"], [-1, -1]),
            }
        ),
    )
    dd = _load("imdb", None)
    assert calls == [("stanfordnlp/imdb",)]
    _check_contract(dd, "imdb")
    assert list(dd) == ["train", "validation", "test"]
    assert list(dd["test"]["label"]) == [1, 1, 0]


def test_hub_snli_drops_unlabelled(monkeypatch):
    names = ["entailment", "neutral", "contradiction"]

    def build(*args):
        return datasets.DatasetDict(
            {
                s: _nli_split(names, [0, -1, 1, 2, -1]).remove_columns("idx")
                for s in ("train", "validation", "test")
            }
        )

    _fake_hub(monkeypatch, build)
    dd = _load("snli", None)
    _check_contract(dd, "snli")
    assert list(dd["test"]["label"]) == [0, 1, 2]
    assert list(dd["test"]["id"]) == [2 * G + 0, 2 * G + 2, 2 * G + 3]


def test_hub_unlabelled_eval_split_is_refused(monkeypatch):
    def build(*args):
        return datasets.DatasetDict(
            {
                "train": _single(["negative", "positive"], [0, 1] * 10, "sentence"),
                "validation": _single(["negative", "positive"], [-1, -1], "sentence"),
            }
        )

    def with_idx(dd):
        return datasets.DatasetDict({k: v.add_column("idx", list(range(len(v)))) for k, v in dd.items()})

    _fake_hub(monkeypatch, lambda *a: with_idx(build()))
    with pytest.raises(ValueError, match="unlabelled"):
        _load("sst2", None)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("task", TASKS)
def test_task_config_contract(task):
    cfg = _cfg(task)
    assert set(cfg) == CONTRACT_KEYS
    assert cfg.name == task
    names = list(cfg.label_names)
    assert len(names) >= 2 and len(set(names)) == len(names)
    assert cfg.kind == "classification"
    assert isinstance(cfg.pair, bool) and isinstance(cfg.max_length, int)
    assert set(cfg.training) == TRAINING_KEYS
    loader = instantiate(cfg.loader)
    assert isinstance(loader, TextClassificationLoader)
    assert loader.task == task and loader.pair == cfg.pair
    for spec in (loader.hub, loader.local):
        if spec is None:
            continue
        splits = set(spec.get("splits") or {}) | set((spec.get("derive") or {}).get("fractions", {}))
        assert {cfg.eval_split, *cfg.extra_splits} <= splits


def test_all_contract_tasks_have_configs():
    assert {"mnli", "snli", "qqp", "mrpc", "sst2", "rte", "imdb", "paws_qqp"} <= set(TASKS)
