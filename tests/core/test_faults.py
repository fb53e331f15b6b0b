"""Faults a new user hit (each reproduced first): a same-size copy served stale cached outputs,
out-of-range settings and unreadable files that gave tracebacks or ran silently, half-written run files
after a kill, a full disk. Each now ends in one line, ``error: <what> - fix: <how>`` (exit status 2 at the
entry points), naming the file or key, or warns; the writers leave an old file or a new one, never half of
one."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, compose, tiny_overrides, write_classifier

from trustequiv.cache import NotAFileError, OutputCache, atomic_open, atomic_save, atomic_write_text
from trustequiv.config import check_config
from trustequiv.models.fingerprint import file_digest, fingerprint
from trustequiv.models.loading import check_model_inputs
from trustequiv.outputs import ModelOutputs
from trustequiv.run import pipeline
from trustequiv.user_errors import CheckpointError, ConfigError, one_line

LABELS = ("negative", "positive")


def assert_one_line(line: str | None) -> str:
    assert line is not None, "a known failure must give its one line"
    assert "\n" not in line and line.startswith("error: ") and " - fix: " in line, line
    return line


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_bert) -> Path:
    """The tiny BERT with a trained-looking head over the task's labels (64 position embeddings, 2 layers)."""
    return write_classifier(tiny_bert, tmp_path_factory.mktemp("faults") / "classifier", LABELS)


def _broken_copy(tmp_path: Path, classifier: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(classifier, d)
    return d


def _evaluate_error(tmp_path, tiny_bert, data, *extra: str, reference: Path) -> tuple[BaseException, str]:
    """The line ``pipeline.evaluate`` ends with (the entry points print it, exit 2); the reference loads
    first, so a refusal comes before any model predicts."""
    args = tiny_overrides(tmp_path, tiny_bert, data, f"reference.checkpoint={reference}", *extra)
    with pytest.raises(Exception) as info:
        pipeline.evaluate(compose("evaluate", args))
    return info.value, assert_one_line(one_line(info.value))


# ------------------------------------------------------------------------- 1. same-size copy, mtime kept
def test_same_size_copy_with_its_mtime_kept_is_hashed_again(tmp_path):
    """Before: the memo key was (path, size, mtime), so `cp -p` / `rsync -t` of other weights of the same
    size was served the old weights' cached outputs."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "bert"}')
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"A" * 4096)
    memo = tmp_path / "cache" / "fingerprints.json"
    before, digest_before = fingerprint(ckpt, memo), file_digest(weights, memo)
    st = weights.stat()
    time.sleep(0.05)  # ctime has the kernel clock's tick (a few ms): a real copy takes longer than one
    weights.write_bytes(b"B" * 4096)  # same size, other bytes, in place (same inode, as cp -p onto it)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime, as cp -p / rsync -t keep it
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = fingerprint(ckpt, memo)
    assert after != before and after == fingerprint(ckpt)  # the memo's answer is the content's
    # an ONNX file's own digest (plugins/sources/onnx/files.py)
    assert file_digest(weights, memo) != digest_before
    # A copy renamed into place (rsync's temporary file, tar) is a new inode: hashed again as well.
    other = tmp_path / "other"
    other.write_bytes(b"A" * 4096)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, weights)
    assert fingerprint(ckpt, memo) == before
    # One memo entry per version of a file (config.json's once): unchanged files come from the memo.
    assert len(json.loads(memo.read_text())) == 4


# ------------------------------------------------------------------------- 2. task.max_length
@pytest.mark.parametrize("value", [0, -3])
def test_max_length_below_one_is_refused_by_the_config_check(value):
    """Before: task.max_length=0 ran to exit 0, warning that every example was truncated to 0."""
    with pytest.raises(ConfigError) as info:
        check_config(compose("evaluate", [f"task.max_length={value}"]))
    line = assert_one_line(one_line(info.value))
    assert f"task.max_length={value}" in line and "task.max_length=128" in line


def test_max_length_above_the_model_is_refused_naming_its_limit(tmp_path, classifier):
    """Before: an IndexError in the position embeddings at the first text longer than they are."""
    check_model_inputs(classifier, {"max_length": 64})
    with pytest.raises(ConfigError) as info:
        check_model_inputs(classifier, {"max_length": 65})
    line = assert_one_line(one_line(info.value))
    assert "task.max_length=65" in line and "at most 64 tokens" in line and "task.max_length=64" in line
    # The tokenizer's limit counts when it is a real one (RoBERTa: 514 positions, 512 tokens) ...
    d = _broken_copy(tmp_path, classifier, "short_tokenizer")
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "model_max_length": 40}))
    with pytest.raises(ConfigError, match=r"at most 40 tokens \(model_max_length=40"):
        check_model_inputs(d, {"max_length": 41})
    # ... and not when it is transformers' "no limit" placeholder.
    (d / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "model_max_length": int(1e30)}))
    check_model_inputs(d, {"max_length": 64})


def test_max_length_is_checked_before_predicting_and_before_fine_tuning(
    tmp_path, tiny_bert, synthetic_data_dir, classifier, monkeypatch
):
    from trustequiv.train import fine_tune as training

    _, line = _evaluate_error(
        tmp_path, tiny_bert, synthetic_data_dir, "task.max_length=512", reference=classifier
    )
    assert f"task.max_length=512 is more than the model in {classifier} takes" in line

    def no_training(*args, **kwargs):
        raise AssertionError("fine-tuning started with a max_length the model cannot take")

    monkeypatch.setattr(training, "fine_tune", no_training)
    args = tiny_overrides(
        tmp_path, tiny_bert, synthetic_data_dir, "train_missing=true", "task.max_length=512"
    )
    with pytest.raises(ConfigError) as info:
        pipeline.evaluate(compose("evaluate", args))
    assert f"the model in {tiny_bert} takes: at most 64" in assert_one_line(one_line(info.value))


# ------------------------------------------------------------------------- 3. atomic writes
def test_atomic_open_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    target = tmp_path / "run" / "results.json"
    atomic_write_text('{"old": true}', target)
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"new": tr')  # half written, then the run fails
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]  # no temporary file left

    import trustequiv.cache as cache

    def no_rename(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cache.os, "replace", no_rename)
    with pytest.raises(OSError):
        atomic_write_text('{"new": true}', target)
    assert target.read_text() == '{"old": true}'
    monkeypatch.undo()
    atomic_write_text("é ✓", target)  # UTF-8 whatever the locale
    assert target.read_bytes() == "é ✓".encode()


def test_kill_9_mid_write_leaves_the_old_file_whole(tmp_path):
    """A real SIGKILL in the middle of the write: the old file is what is there afterwards."""
    target = tmp_path / "report.html"
    target.write_text("<p>old report</p>")
    script = (
        "import os, signal, sys\n"
        "from trustequiv.cache import atomic_open\n"
        "with atomic_open(sys.argv[1]) as fh:\n"
        "    fh.write('<p>new rep' * 100000)\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(target)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "<p>old report</p>"


def _outputs() -> ModelOutputs:
    return ModelOutputs(
        name="m",
        example_ids=torch.tensor([1, 2]),
        logits=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        labels=torch.tensor([0, 1]),
        label_names=LABELS,
    )


def test_every_run_and_sweep_file_is_written_atomically(tmp_path, monkeypatch):
    """results.json, report.md, report.html, predictions and per-example CSVs, and the sweep's files: with
    the final rename failing (where a kill would stop), each still holds its old content."""
    import trustequiv.cache as cache
    from trustequiv.report import html as html_report
    from trustequiv.report import run_report as reporting
    from trustequiv.report import sweep
    from trustequiv.report import sweep_html as sweep_report

    names = ["results.json", "report.md", "report.html", "pred.csv", "per/x.csv"]
    names += [sweep.RESULTS, sweep.VERDICT_CSV, sweep.REPORT]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("old")

    def killed(src, dst):
        raise KeyboardInterrupt  # stands for the kill: the whole temporary file is written, not renamed

    monkeypatch.setattr(cache.os, "replace", killed)
    monkeypatch.setattr(html_report, "render_html", lambda *a, **k: "<html>new</html>")
    monkeypatch.setattr(
        sweep, "collect", lambda *a, **k: {"verdict": [], "jobs": [], "failed": [], "matrices": []}
    )
    monkeypatch.setattr(sweep, "verdict_csv", lambda rows: "new")
    monkeypatch.setattr(sweep_report, "sweep_report_html", lambda results: "<html>new</html>")
    writes = [
        lambda: reporting.write_results(tmp_path / "results.json", {"a/b/c": 1.0}),
        lambda: reporting.write_report(
            tmp_path / "report.md", title="t", summary=[], headline={}, results={}, figure_paths={}
        ),
        lambda: html_report.write_html_report(tmp_path / "report.html", {}, {}, {}, "t"),
        lambda: reporting.write_predictions(_outputs(), tmp_path / "pred.csv"),
        lambda: reporting.write_per_example({"x": {"id": [1, 2]}}, tmp_path / "per"),
        lambda: sweep.build_sweep(tmp_path),
    ]
    for write in writes:
        with pytest.raises(KeyboardInterrupt):
            write()
    assert {name: (tmp_path / name).read_text() for name in names} == dict.fromkeys(names, "old")
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------- 4. tracebacks -> one line
def _tiny_onnx(path: Path, op: str = "Identity") -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])
    y = helper.make_tensor_value_info("logits", TensorProto.INT64, [None, None])
    graph = helper.make_graph([helper.make_node(op, ["input_ids"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("kind", ["truncated", "not_onnx", "empty", "bad_graph"])
def test_unreadable_onnx_file_is_one_line(tmp_path, tiny_bert, kind):
    """Before: protobuf's DecodeError (or onnxruntime's InvalidProtobuf / InvalidGraph) with a traceback."""
    pytest.importorskip("onnxruntime")
    from plugins.sources.onnx import source as onnx_source
    from trustequiv.data.task_kind import task_kind

    d = tmp_path / "onnx_model"
    shutil.copytree(tiny_bert, d, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "id2label": dict(enumerate(LABELS))}))
    model = _tiny_onnx(d / "model.onnx", "NoSuchOp" if kind == "bad_graph" else "Identity")
    raw = model.read_bytes()
    if kind == "truncated":
        model.write_bytes(raw[: len(raw) * 2 // 3])
    elif kind == "not_onnx":
        model.write_text("<html>404 Not Found</html>")
    elif kind == "empty":
        model.write_bytes(b"")
    task = {"name": "sst2", "label_names": list(LABELS), "max_length": 32, "pair": False}
    ctx = SimpleNamespace(kind=task_kind(task), task_cfg=task, memo_file=tmp_path / "fingerprints.json")
    source = onnx_source.OnnxSource({"name": "m_onnx", "path": str(d)})
    with pytest.raises(CheckpointError) as info:
        source.prepare(ctx)
        source._load()  # onnxruntime opens it when something is to be predicted
    line = assert_one_line(one_line(info.value))
    assert f"{model} is not a readable ONNX model" in line and "model.path" in line


def test_layer_beyond_the_model_is_one_line(tmp_path, tiny_bert, synthetic_data_dir, classifier):
    """Before: IndexError: tuple index out of range, in the middle of predicting."""
    check_model_inputs(classifier, {"max_length": 32}, {"layer": 2})
    check_model_inputs(classifier, {"max_length": 32}, {"layer": -3})
    _, line = _evaluate_error(
        tmp_path, tiny_bert, synthetic_data_dir, "predict.layer=99", reference=classifier
    )
    assert "predict.layer=99" in line and "2 hidden layers" in line and "predict.layer=-1" in line
    with pytest.raises(ConfigError, match=r"predict.layer=-4"):
        check_model_inputs(classifier, {"max_length": 32}, {"layer": -4})


@pytest.mark.parametrize("fault", ["no_tokenizer", "garbage_config", "garbage_metadata", "list_metadata"])
def test_broken_checkpoint_files_are_one_line(tmp_path, tiny_bert, synthetic_data_dir, classifier, fault):
    """Before: TypeError (no tokenizer), OSError (config.json) and JSONDecodeError (trustequiv.json)
    tracebacks."""
    d = _broken_copy(tmp_path, classifier, fault)
    if fault == "no_tokenizer":
        for f in d.iterdir():
            if f.name not in ("config.json", "model.safetensors"):
                f.unlink()
        expected = f"cannot load a tokenizer from {d}"
    elif fault == "garbage_config":
        (d / "config.json").write_text('{"model_type": "bert", ')
        expected = f"{d / 'config.json'} is not a usable model config"
    else:
        (d / "trustequiv.json").write_text("{oops" if fault == "garbage_metadata" else "[1, 2]")
        expected = f"{d / 'trustequiv.json'} is not a JSON object"
    err, line = _evaluate_error(tmp_path, tiny_bert, synthetic_data_dir, reference=d)
    assert isinstance(err, CheckpointError) and expected in line, line


def test_directory_where_a_cache_file_belongs_is_one_line(
    tmp_path, tiny_bert, synthetic_data_dir, classifier
):
    """Before: IsADirectoryError tracebacks (the cache's entries, its extras, the fingerprint memo)."""
    cache = OutputCache(tmp_path / "cache")
    cache.save("ab" * 32, _outputs(), {})
    for path in (cache.meta_path("ab" * 32), cache.extras_path("cd" * 32)):
        path.unlink(missing_ok=True)
        path.mkdir(parents=True)
    with pytest.raises(NotAFileError) as info:
        cache.load("ab" * 32, "m")
    line = assert_one_line(one_line(info.value))
    assert f"{cache.meta_path('ab' * 32)} is a directory" in line and "move that directory" in line
    with pytest.raises(NotAFileError):
        cache.load_extras("cd" * 32)
    with pytest.raises(NotAFileError):
        atomic_write_text("{}", cache.extras_path("cd" * 32))  # written over: the rename meets a directory
    assert cache.extras_path("cd" * 32).is_dir()  # never removed: it may hold the user's files
    (tmp_path / "cache" / "fingerprints.json").mkdir()  # the memo, through the pipeline
    err, line = _evaluate_error(tmp_path, tiny_bert, synthetic_data_dir, reference=classifier)
    assert isinstance(err, IsADirectoryError) and "fingerprints.json is a directory" in line


def test_candidates_that_are_not_candidate_entries_are_one_line():
    """Before: TypeError: string indices must be integers, in the plan."""
    for override, named in [
        ("candidates=[foo]", "candidates[0]='foo'"),
        ("candidates=foo", "candidates='foo'"),
        ("candidates=[{base: minilm}]", "candidates[0].base='minilm' is not a model node"),
        ("candidates=[{model: ${model}}]", "candidates[0]"),
        ("candidates=[{base: ${model}, compressor: int8}]", "candidates[0].compressor='int8'"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_config(compose("evaluate", [override]))
        line = assert_one_line(one_line(info.value))
        assert named in line and "{base: <model node>, compressor: <compressor node or null>}" in line, line
    for experiment in ("offline_minilm", "offline_minilm_onnx", "trust_kd", "paper_b_squad2_errors"):
        check_config(compose("evaluate", [f"experiment={experiment}"]))  # the shipped lists pass


def test_entry_point_exits_2_with_the_one_line(tmp_path):
    """What the user sees: ``python evaluate.py candidates=[foo]`` (a TypeError traceback before)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    args = ["candidates=[foo]", "logger=none", f"paths.log_dir={tmp_path}/logs"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert assert_one_line(lines[0]).startswith("error: candidates[0]='foo' is not a candidate - fix: ")


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "true"])
def test_seed_that_is_not_a_whole_number_names_seed(value):
    """Before: "invalid literal for int() with base 10: 'abc'", no key named."""
    with pytest.raises(ConfigError) as info:
        check_config(compose("evaluate", [f"seed={value}"]))
    line = assert_one_line(one_line(info.value))
    assert line.startswith("error: seed=") and "seed=42" in line
    check_config(compose("evaluate", ["seed=0"]))


def test_headless_encoder_says_it_has_no_head_before_asking_for_label_names(
    tmp_path, tiny_bert, synthetic_data_dir
):
    """Before: "the checkpoint carries no label names ... set model.label_names", and once declared, only
    then that it has no head (a task of 3 classes: "a head of 2 classes")."""
    _, line = _evaluate_error(tmp_path, tiny_bert, synthetic_data_dir, reference=tiny_bert)
    assert "no trained BertForSequenceClassification head" in line and "classifier.weight" in line
    assert "label_names" not in line


def test_fine_tuning_with_max_epochs_0_warns_in_the_log_and_the_results(
    tmp_path, tiny_bert, synthetic_data_dir, caplog
):
    """Before: an untrained (random) head was evaluated without a word."""
    args = tiny_overrides(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        "train_missing=true",
        "trainer.max_epochs=0",
        "characteristic=[errors]",
        "limit_examples=16",
    )
    with caplog.at_level(logging.WARNING):
        result = pipeline.evaluate(compose("evaluate", args))
    assert "tiny_ref was fine-tuned with trainer.max_epochs=0" in caplog.text
    results = json.loads((Path(result["output_dir"]) / "results.json").read_text())
    assert "its new head is untrained" in results["notes"]["tiny_ref/warnings"][0]
    assert "trainer.max_epochs=0" in (Path(result["output_dir"]) / "report.md").read_text()
    # Kept with the checkpoint: a later run that only evaluates it still says so.
    again = pipeline.evaluate(compose("evaluate", args))
    notes = json.loads((Path(again["output_dir"]) / "results.json").read_text())["notes"]
    assert "trainer.max_epochs=0" in notes["tiny_cand/warnings"][0]


# ------------------------------------------------------------------------- 5. a full disk
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name


def test_full_disk_names_the_directory_and_the_settings(tmp_path, monkeypatch):
    import trustequiv.cache as cache

    monkeypatch.setattr(cache, "save_file", _no_space)
    target = tmp_path / "cache" / "outputs" / "ab" / "k.safetensors"
    with pytest.raises(OSError) as info:
        atomic_save({"a": torch.zeros(2)}, target)
    line = assert_one_line(one_line(info.value))
    assert f"no space left on the disk of {target.parent}" in line
    assert "paths.cache_dir" in line and "hydra.run.dir" in line
    assert not list(target.parent.iterdir())  # no temporary file left to fill the disk further

    real_write = Path.write_text

    def full_run_dir(self, *args, **kwargs):  # the run dir's disk is full, the others are not
        if "run" in self.parts:
            real_write(self, "")  # the file is opened, then the first write() fails
            _no_space()
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_run_dir)
    from trustequiv.report.run_report import write_results

    with pytest.raises(OSError) as info:
        write_results(tmp_path / "run" / "results.json", {"a/b/c": 1.0})
    assert f"no space left on the disk of {tmp_path / 'run'} (writing results.json)" in one_line(info.value)
    # safetensors says it in its own words, not as an OSError.
    text = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'
    assert "no space left on the disk" in assert_one_line(one_line(RuntimeError(text)))


def test_full_cache_disk_through_the_pipeline(
    tmp_path, tiny_bert, synthetic_data_dir, classifier, monkeypatch
):
    """Before: a traceback ending in OSError: [Errno 28]; now the line, and the entry point exits 2."""
    import trustequiv.cache as cache

    monkeypatch.setattr(cache, "save_file", _no_space)
    _, line = _evaluate_error(tmp_path, tiny_bert, synthetic_data_dir, reference=classifier)
    assert f"no space left on the disk of {tmp_path / 'cache'}" in line and "paths.cache_dir" in line
