"""Cache, checkpoint and run-dir safety (issues 10 and 13): content-keyed data, locked cache entries,
permission errors that say so, set-aside malformed files, inert checkpoint metadata, contained model
directories and run dirs unique per process."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import CONF, REPO, compose, write_classifier

from trustequiv.cache import (
    CacheNotWritableError,
    CachePermissionError,
    OutputCache,
    atomic_save,
    path_lock,
    run_id,
)
from trustequiv.data.splits import split_fingerprint
from trustequiv.models.compressor import build_compressor, compressor_registry
from trustequiv.models.fingerprint import fingerprint
from trustequiv.models.loading import METADATA_FILE, load_classifier
from trustequiv.models.spec import ModelSpec, check_name
from trustequiv.outputs import ModelOutputs
from trustequiv.prediction import assemble_rows, cached_prediction

KEY = "ab" * 32
LABELS = ("negative", "positive")


def _get(cache: OutputCache, key: str, predict, expected_ids, meta=None):
    """The one cached-prediction mechanism over rows of ``example_id`` / ``logits`` / ``labels``."""
    ids = list(expected_ids)
    return cached_prediction(
        cache,
        key,
        name="m",
        run=predict,
        assemble=assemble_rows("m", LABELS, keep_ids=ids),
        meta=meta or {},
        expected_ids=ids,
    )


def _outputs(ids: list[int]) -> ModelOutputs:
    t = torch.tensor(ids, dtype=torch.int64)
    return ModelOutputs(
        name="m",
        example_ids=t,
        logits=torch.stack([t.float(), -t.float()], dim=1),
        labels=t % 2,
        label_names=LABELS,
    )


def _write_batches(cache: OutputCache, key: str, ids: list[int], pause: float = 0.0, size: int = 4) -> None:
    """A stand-in prediction: batches of ``ids`` (logits ``[id, -id]``) into the entry's partial dir."""
    d = cache.partial_dir(key)
    for start in range(0, len(ids), size):
        t = torch.tensor(ids[start : start + size], dtype=torch.int64)
        batch = {"example_id": t, "logits": torch.stack([t.float(), -t.float()], dim=1), "labels": t % 2}
        atomic_save(batch, d / f"r0-first{int(t[0])}.safetensors")  # named as PartialPredictionWriter does
        time.sleep(pause)


# -- 1. outputs keyed by the data's content


def _split(n: int = 50) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "id": list(range(n)),
            "text_a": [f"review {i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
    )


def test_split_fingerprint_follows_content_not_order():
    ds = _split()
    fp = split_fingerprint(ds)
    assert len(fp) == 64
    assert split_fingerprint(ds.shuffle(seed=3)) == fp  # order (and an indices mapping) does not matter
    assert split_fingerprint(ds.shuffle(seed=3).flatten_indices()) == fp
    flipped = ds.map(lambda r: {"label": 1 - r["label"] if r["id"] == 7 else r["label"]})
    assert split_fingerprint(flipped) != fp  # one flipped label
    edited = ds.map(lambda r: {"text_a": r["text_a"] + "!" if r["id"] == 0 else r["text_a"]})
    assert split_fingerprint(edited) != fp
    assert split_fingerprint(ds.select(range(49))) != fp
    # rows swapping labels between equal ids are still told apart from the original
    dup = datasets.Dataset.from_dict({"id": [1, 1], "label": [0, 1], "t": ["a", "b"]})
    swapped = datasets.Dataset.from_dict({"id": [1, 1], "label": [1, 0], "t": ["a", "b"]})
    assert split_fingerprint(dup) != split_fingerprint(swapped)
    with pytest.raises(TypeError, match="DatasetDict"):
        split_fingerprint(datasets.DatasetDict({"test": ds}))


# -- 2. locks: two runs on one cache


def _predict_worker(root: str, key: str, n: int, barrier, result_file: str) -> None:
    logging.basicConfig(level=logging.INFO)
    cache = OutputCache(root)
    barrier.wait()  # both processes ask for the entry at the same moment

    def predict(done: set[int]) -> None:
        _write_batches(cache, key, [i for i in range(n) if i not in done], pause=0.1)

    out, cached = _get(cache, key, predict, range(n), {"model": "m"})
    Path(result_file).write_text(
        json.dumps({"cached": cached, "ids": out.example_ids.tolist(), "logits": out.logits.tolist()})
    )


def test_two_processes_on_one_entry_both_get_the_whole_outputs(tmp_path):
    n = 40  # 10 batches, 0.1 s apart: the runs overlap for a second
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = [tmp_path / f"result{i}.json" for i in range(2)]
    procs = [
        ctx.Process(target=_predict_worker, args=(str(tmp_path / "cache"), KEY, n, barrier, str(r)))
        for r in results
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [json.loads(r.read_text()) for r in results]
    assert sorted(g["cached"] for g in got) == [False, True]  # one predicted, the other waited and read it
    for g in got:
        assert g["ids"] == list(range(n))
        assert g["logits"] == [[float(i), -float(i)] for i in range(n)]
    cache = OutputCache(tmp_path / "cache")
    entry = cache.load(KEY, "m", expected_ids=range(n))
    assert entry is not None and entry.example_ids.tolist() == list(range(n))
    assert not cache.partial_dir(KEY).exists()
    assert not (tmp_path / "cache" / "corrupt").exists()


def test_path_lock_waits_and_says_so(tmp_path, caplog):
    target = tmp_path / "models" / "sst2" / "m"
    order: list[str] = []

    def other() -> None:
        with path_lock(target):
            order.append("other")

    with caplog.at_level(logging.INFO, logger="trustequiv.cache"), path_lock(target):
        with path_lock(target):  # reentrant in one thread
            pass
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "other"]
    assert (tmp_path / "models" / "sst2" / "m.lock").exists()
    assert "waiting for it to finish" in caplog.text


def test_entry_with_other_ids_is_set_aside_and_recomputed(tmp_path):
    cache = OutputCache(tmp_path)
    cache.save(KEY, _outputs([0, 1, 2]), {"model": "m"})
    assert cache.load(KEY, "m", expected_ids=[2, 1, 0]) is not None  # same set, any order
    calls = []

    def predict(done):
        calls.append(set(done))
        _write_batches(cache, KEY, [i for i in range(5) if i not in done])

    out, cached = _get(cache, KEY, predict, range(5))
    assert not cached and calls == [set()] and out.example_ids.tolist() == list(range(5))
    assert (tmp_path / "corrupt" / f"{KEY}.safetensors").exists()
    _, cached = _get(cache, KEY, predict, range(5))
    assert cached and len(calls) == 1


def test_prediction_missing_requested_ids_is_an_error(tmp_path):
    cache = OutputCache(tmp_path)
    with pytest.raises(RuntimeError, match="3 examples, 5 were requested"):
        _get(cache, KEY, lambda done: _write_batches(cache, KEY, [0, 1, 2]), range(5))
    # the rerun resumes; stale rows of ids not requested are dropped, not saved
    out, _ = _get(cache, KEY, lambda d: _write_batches(cache, KEY, [3, 4, 9]), range(5))
    assert out.example_ids.tolist() == [0, 1, 2, 3, 4]


# -- 3. unreadable and malformed files


def _deny(monkeypatch, path: Path, method: str) -> None:
    """Make ``Path.<method>`` raise PermissionError for ``path`` only (as root, chmod blocks nothing)."""
    real = getattr(Path, method)

    def guarded(self, *args, **kwargs):
        if Path(self) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, guarded)


@pytest.mark.parametrize("which", ["tensors", "meta"])
def test_unreadable_entry_is_a_permission_error_not_corruption(tmp_path, monkeypatch, which):
    cache = OutputCache(tmp_path)
    cache.save(KEY, _outputs([0, 1]), {})
    path = cache.tensors_path(KEY) if which == "tensors" else cache.meta_path(KEY)
    _deny(monkeypatch, path, "open" if which == "tensors" else "read_bytes")
    with pytest.raises(CachePermissionError) as err:
        cache.load(KEY, "m")
    msg = str(err.value)
    assert str(path) in msg and "paths.cache_dir" in msg and "chmod" in msg
    assert "\n" not in msg
    assert path.exists() and not (tmp_path / "corrupt").exists()  # nothing moved aside


def test_unreadable_extras_and_partial_batches(tmp_path, monkeypatch):
    cache = OutputCache(tmp_path)
    cache.save_extras(KEY, {"a": 1})
    _write_batches(cache, KEY, [0, 1])
    (batch,) = cache.partial_dir(KEY).glob("*.safetensors")
    _deny(monkeypatch, cache.extras_path(KEY), "read_bytes")
    _deny(monkeypatch, batch, "open")
    with pytest.raises(CachePermissionError, match="cannot read cache file"):
        cache.load_extras(KEY)
    with pytest.raises(CachePermissionError, match="cannot read cache file"):
        cache.partial_files(KEY)
    assert batch.exists()  # not deleted as a torn write


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_entry_real_chmod(tmp_path):
    cache = OutputCache(tmp_path)
    cache.save(KEY, _outputs([0, 1]), {})
    cache.tensors_path(KEY).chmod(0)
    try:
        with pytest.raises(CachePermissionError, match="chmod"):
            cache.load(KEY, "m")
    finally:
        cache.tensors_path(KEY).chmod(0o644)


def test_read_only_cache_dir_names_the_setting(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(CacheNotWritableError) as err:
        OutputCache(tmp_path / "cache")
    msg = str(err.value)
    assert str(tmp_path / "cache") in msg and "paths.cache_dir=" in msg and "\n" not in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode")
def test_read_only_cache_dir_real_chmod(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o555)
    try:
        with pytest.raises(CacheNotWritableError, match=r"paths\.cache_dir"):
            OutputCache(tmp_path / "cache")
    finally:
        (tmp_path / "cache").chmod(0o755)


def test_write_failure_later_names_the_setting(tmp_path, monkeypatch):
    cache = OutputCache(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(CacheNotWritableError, match=r"paths\.cache_dir"):
        cache.save_extras(KEY, {"a": 1})


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"', "\xff\xfe"])
def test_malformed_extras_are_set_aside(tmp_path, text):
    cache = OutputCache(tmp_path)
    cache.extras_path(KEY).parent.mkdir(parents=True)
    cache.extras_path(KEY).write_bytes(text.encode("latin-1"))
    assert cache.load_extras(KEY) is None
    assert (tmp_path / "corrupt" / f"{KEY}.json").exists() and not cache.extras_path(KEY).exists()
    cache.save_extras(KEY, {"a": 1})
    assert cache.load_extras(KEY) == {"a": 1}


def _checkpoint_like(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "bert"}')
    (directory / "model.safetensors").write_bytes(b"weights" * 100)
    return directory


@pytest.mark.parametrize("text", ["{not json", "[]", '{"k": 3}'])
def test_malformed_fingerprint_memo_is_set_aside_and_rebuilt(tmp_path, text):
    ckpt = _checkpoint_like(tmp_path / "ckpt")
    expected = fingerprint(ckpt)
    memo = tmp_path / "cache" / "fingerprints.json"
    memo.parent.mkdir()
    memo.write_text(text)
    assert fingerprint(ckpt, memo) == expected
    assert (tmp_path / "cache" / "corrupt" / "fingerprints.json").read_text() == text
    rebuilt = json.loads(memo.read_text())
    assert len(rebuilt) == 2 and all(isinstance(v, str) for v in rebuilt.values())
    assert fingerprint(ckpt, memo) == expected


def test_fingerprint_memo_merges_and_unreadable_memo_is_a_permission_error(tmp_path, monkeypatch):
    memo = tmp_path / "cache" / "fingerprints.json"
    a, b = _checkpoint_like(tmp_path / "a"), _checkpoint_like(tmp_path / "b")
    (b / "config.json").write_text('{"model_type": "bert", "x": 1}')
    fingerprint(a, memo)
    fingerprint(b, memo)
    assert len(json.loads(memo.read_text())) == 4  # b's entries added to a's, not replacing them
    _deny(monkeypatch, memo, "read_bytes")
    with pytest.raises(CachePermissionError, match=r"fingerprints\.json"):
        fingerprint(a, memo)


# -- 4. checkpoint metadata is data


@pytest.fixture
def checkpoint(tmp_path, tiny_bert):
    def make(recipe: dict | None) -> Path:
        d = write_classifier(tiny_bert, tmp_path / f"ckpt{len(list(tmp_path.glob('ckpt*')))}", LABELS)
        (d / METADATA_FILE).write_text(json.dumps({"compressor": recipe} if recipe else {}))
        return d

    return make


@pytest.mark.parametrize(
    "recipe",
    [
        {"_target_": "builtins.open", "file": "{marker}", "mode": "w"},
        {"_target_": "builtins.open", "name": "quantize_dynamic", "file": "{marker}", "mode": "w"},
        {"_target_": "trustequiv.cache.atomic_write_text", "text": "pwned", "path": "{marker}"},
        {
            "_target_": "trustequiv.cache.atomic_write_text",
            "name": "layer_drop",
            "keep": [0],
            "path": "{marker}",
        },
        {"name": "layer_drop", "keep": {"_target_": "builtins.open", "file": "{marker}", "mode": "w"}},
        {"name": "quantize_dynamic", "_partial_": True, "_args_": ["{marker}"]},
    ],
)
def test_crafted_checkpoint_metadata_runs_nothing(checkpoint, tmp_path, recipe):
    marker = tmp_path / "pwned.txt"
    recipe = json.loads(json.dumps(recipe).replace("{marker}", str(marker)))
    d = checkpoint(recipe)
    with pytest.raises(ValueError, match="compressor"):
        load_classifier(str(d), list(LABELS), declared_label_names=list(LABELS))
    assert not marker.exists()


def test_target_in_metadata_is_ignored_and_a_normal_recipe_loads(checkpoint, tmp_path):
    marker = tmp_path / "pwned.txt"
    crafted = checkpoint(
        {"_target_": "trustequiv.cache.atomic_write_text", "name": "quantize_dynamic", "dtype": "qint8"}
    )
    loaded = load_classifier(str(crafted), list(LABELS), declared_label_names=list(LABELS))
    assert loaded.cpu_only and not marker.exists()
    recipe = {"_target_": "plugins.compressors.quantize.QuantizeDynamic", "name": "quantize_dynamic"}
    normal = checkpoint({**recipe, "dtype": "qint8", "backend": "torch_ao"})
    loaded = load_classifier(str(normal), list(LABELS), declared_label_names=list(LABELS))
    assert loaded.cpu_only
    quantized = [m for m in loaded.model.modules() if "quantized" in type(m).__module__]
    assert quantized  # the recipe was applied on load


@pytest.mark.parametrize("path", sorted((CONF / "compressor").glob("*.yaml")))
def test_every_compressor_config_builds_by_name(path):
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    obj = build_compressor(node)
    assert node["name"] in compressor_registry()
    assert f"{type(obj).__module__}.{type(obj).__qualname__}" == node["_target_"]


def test_unknown_compressor_lists_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown compressor 'nope'; known: \[.*'layer_drop', .*'quantize_dynamic'"
    ):
        build_compressor({"name": "nope"})
    with pytest.raises(ValueError, match="takes no setting"):
        build_compressor({"name": "layer_drop", "shell": "rm -rf"})


# -- 5. model names stay inside models_dir

MODEL = {"name": "minilm", "pretrained": "x"}


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", ".", "..", ".hidden", "x y", "/abs", "a" * 201])
def test_bad_model_names_are_refused(name):
    with pytest.raises(ValueError, match=r"^model\.name=.*not a valid name"):
        ModelSpec.from_config({**MODEL, "name": name})
    with pytest.raises(ValueError, match=r"^reference\.name="):
        ModelSpec.from_config({**MODEL, "name": name}, key="reference")
    with pytest.raises(ValueError, match=r"^compressor\.name="):
        ModelSpec.from_config(MODEL, {"name": name})
    with pytest.raises(ValueError, match="not a valid name"):
        ModelSpec(name=name, pretrained="x").default_dir("/models", "sst2")


def test_good_names_and_default_dir(tmp_path):
    spec = ModelSpec.from_config({**MODEL, "name": "bert-base_v1.2"}, {"name": "layer_drop"})
    assert spec.name == "bert-base_v1.2+layer_drop"
    assert spec.default_dir(tmp_path, "sst2") == tmp_path / "sst2" / "bert-base_v1.2+layer_drop"
    with pytest.raises(ValueError, match=r"^task\.name="):
        spec.default_dir(tmp_path, "../x")
    for path in (CONF / "model").glob("*.yaml"):  # every shipped model (and compressor) name is valid
        name = compose("evaluate", [f"model={path.stem}"]).model.name
        assert name is None or check_name(name, "model.name") == name  # None: derived by its source
    for path in (CONF / "compressor").glob("*.yaml"):
        check_name(path.stem, "compressor.name")


# -- 6. run dirs unique per process, shared within a sweep

APP = """
import sys
import hydra
from hydra.core.hydra_config import HydraConfig
from trustequiv.config import register_resolvers

register_resolvers()


@hydra.main(config_path=sys.argv.pop(1), config_name="evaluate", version_base="1.3")
def main(cfg):
    hc = HydraConfig.get()
    print("DIRS", hc.runtime.output_dir, hc.sweep.dir, hc.run.dir)


main()
"""


def _sweep(tmp_path: Path) -> list[tuple[Path, ...]]:
    """Run a two-job ``-m`` sweep of a Hydra app on the real config tree in a new process; each job's
    (output dir, sweep dir, run dir)."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    args = ["-m", "seed=1,2", f"paths.log_dir={tmp_path}/logs", "logger=none"]
    proc = subprocess.run(
        [sys.executable, str(script), str(CONF), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("DIRS")]
    return [tuple(map(Path, line)) for line in lines]


def test_run_dirs_are_unique_per_process_and_shared_by_a_sweep(tmp_path):
    first, second = _sweep(tmp_path), _sweep(tmp_path)
    for jobs in (first, second):
        assert len(jobs) == 2
        (out0, sweep0, run0), (out1, sweep1, run1) = jobs
        assert out0.parent == out1.parent == sweep0 == sweep1  # the jobs of one sweep share its dir
        assert run0 == run1 and run0.parent == tmp_path / "logs" / "evaluate" / "runs"
    assert first[0][1] != second[0][1]  # two processes: two sweep dirs ...
    assert first[0][2] != second[0][2]  # ... and two run dirs, though started within seconds
    assert first[0][1].parent == tmp_path / "logs" / "evaluate" / "multiruns"
    assert run_id() == run_id()  # fixed for the process
