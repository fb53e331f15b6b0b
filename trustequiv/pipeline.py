"""train(cfg) and evaluate(cfg), the jobs of the entry points. The core knows no specific model or task."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from trustequiv.cache import OutputCache, content_key
from trustequiv.characteristic import Characteristic, pair_name
from trustequiv.config import CONF_DIR, available, to_container
from trustequiv.models import (
    ModelSpec,
    fingerprint,
    load_classifier,
    local_dir,
    read_metadata,
    resolve_checkpoint,
)
from trustequiv.outputs import CharacteristicResult, ModelOutputs
from trustequiv.prediction import predict_outputs
from trustequiv.qa import (
    apply_null_threshold,
    fine_tune_qa,
    is_qa,
    load_qa_model,
    null_threshold_for,
    predict_qa_outputs,
)
from trustequiv.reporting import (
    headline_rows,
    pair_findings,
    print_headline,
    save_figures,
    write_per_example,
    write_predictions,
    write_report,
    write_results,
)
from trustequiv.splits import hash_unit
from trustequiv.tracking import log_evaluation, make_wandb_logger
from trustequiv.training import fine_tune

log = logging.getLogger(__name__)

# Terminal/report headline columns, found under whichever characteristics ran (absent ones are skipped).
MODEL_HEADLINE = (
    "accuracy",
    "ece_uniform",
    "ece_quantile",
    "mce_uniform",
    "brier",
    "nll",
    "n_errors",
    "exact",
    "f1",
    "success_rate",
    "accuracy_under_attack",
)
PAIR_HEADLINE = (
    "error_jaccard",
    "agreement",
    "flip_rate",
    "cohen_kappa",
    "mcnemar_p",
    "ece_uniform_diff",
    "js_distance",
    "knn_k10",
    "cka_linear",
    "attacked_jaccard",
    "transfer_ref_to_cand",
)


# ---------------------------------------------------------------- config -> objects
def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def load_task_data(cfg: DictConfig):
    """The task's ``DatasetDict`` from ``paths.data_dir`` (local files) or the hub when it is null."""
    return _load_data(_plain(cfg.task), cfg.paths.get("data_dir"))


def _load_data(task_cfg: Mapping[str, Any], data_dir: str | None):
    """``task_cfg``'s ``DatasetDict``: files under ``data_dir``, else the hub (names the fix offline)."""
    loader = hydra.utils.instantiate(task_cfg["loader"])
    label_names = list(task_cfg["label_names"])
    if data_dir:
        return loader.load(str(Path(data_dir).expanduser()), label_names=label_names)
    try:
        return loader.load(None, label_names=label_names)
    except ConnectionError as err:  # datasets raises this offline; say what to do instead
        raise ConnectionError(
            f"{err}. Task {task_cfg['name']} loads from the Hugging Face hub because paths.data_dir is null: "
            "go online, or set paths.data_dir to a folder of local task files "
            "(e.g. paths.data_dir=../shared/data)"
        ) from err


def model_node(node: Any) -> Any:
    """A ``conf/model`` node; a bare name (``reference=bert_large`` on the command line) is looked up there.

    Raises:
        ValueError: the name is not a file in conf/model.
    """
    if not isinstance(node, str):
        return node
    path = CONF_DIR / "model" / f"{node}.yaml"
    if not path.exists():
        raise ValueError(f"unknown model '{node}'; available: {', '.join(available('model'))}")
    return OmegaConf.load(path)


def model_specs(cfg: DictConfig) -> tuple[ModelSpec, list[ModelSpec]]:
    """(reference, candidates) from ``reference``, ``model``, ``compressor`` and ``candidates``.

    Raises:
        ValueError: two models share a name (their outputs and checkpoints would collide).
    """
    reference = ModelSpec.from_config(model_node(cfg.reference))
    if cfg.get("candidates"):
        candidates = [ModelSpec.from_config(c["base"], c.get("compressor")) for c in cfg.candidates]
    else:
        candidates = [ModelSpec.from_config(cfg.model, cfg.get("compressor"))]
    names = [reference.name, *(c.name for c in candidates)]
    if len(set(names)) != len(names):
        raise ValueError(
            f"model names must differ, got {names}: compare a model with a compressed or differently named "
            "version (e.g. compressor=quantize_dynamic), or give the checkpoint another model.name"
        )
    return reference, candidates


def build_characteristics(cfg: DictConfig) -> list[Characteristic]:
    chars = []
    for name, node in (cfg.get("characteristic") or {}).items():
        node = OmegaConf.to_container(node, resolve=True)
        splits = node.pop("splits", None)  # the pipeline's setting, not the plugin's
        obj = hydra.utils.instantiate(node)
        if not isinstance(obj, Characteristic):
            raise TypeError(f"characteristic '{name}' built a {type(obj).__name__}, not a Characteristic")
        obj.splits = None if splits is None else [str(s) for s in splits]
        chars.append(obj)
    if not chars:
        raise ValueError("no characteristic selected: use e.g. characteristic=[calibration,errors]")
    return chars


# ---------------------------------------------------------------- checkpoints
def ensure_checkpoint(spec: ModelSpec, cfg: DictConfig, dataset, *, allow_train: bool, logger=None) -> str:
    """The fine-tuned checkpoint of ``spec`` on the task; trained (and compressed) first when missing and
    ``allow_train``.

    Raises:
        FileNotFoundError: missing and not allowed to train (the message gives the command that makes it).
    """
    found = resolve_checkpoint(spec, cfg.task.name, cfg.paths.models_dir)
    if found:
        return found
    out_dir = spec.default_dir(cfg.paths.models_dir, cfg.task.name)
    if not allow_train:
        comp = f" compressor={spec.compressor['name']}" if spec.compressor else ""
        base = spec.base.name if spec.base else spec.name
        raise FileNotFoundError(
            f"no fine-tuned checkpoint for {spec.name} on {cfg.task.name} at {out_dir}. Make it with "
            f"`python train.py model={base}{comp} task={cfg.task.name}`, point model.checkpoint at one, "
            "or add train_missing=true"
        )
    log.info("training missing checkpoint %s on %s", spec.name, cfg.task.name)
    return str(build_checkpoint(spec, cfg, dataset, logger=logger))


def build_checkpoint(spec: ModelSpec, cfg: DictConfig, dataset, *, logger=None) -> Path:
    """Fine-tune (and compress) ``spec`` into its default dir; a compressed model's base is made first if
    missing."""
    base_checkpoint = None
    if spec.base is not None:
        base_checkpoint = ensure_checkpoint(spec.base, cfg, dataset, allow_train=True, logger=logger)
    tune = fine_tune_qa if is_qa(_plain(cfg.task)) else fine_tune
    return tune(
        spec,
        dataset,
        task_cfg=_plain(cfg.task),
        trainer_cfg=_plain(cfg.trainer),
        out_dir=spec.default_dir(cfg.paths.models_dir, cfg.task.name),
        seed=int(cfg.seed),
        base_checkpoint=base_checkpoint,
        logger=logger if logger is not None else False,
    )


# ---------------------------------------------------------------- train
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` (compressed by ``cfg.compressor`` if set) on ``cfg.task``; return its metadata.

    Raises:
        FileExistsError: the checkpoint exists and ``overwrite`` is false.
    """
    spec = ModelSpec.from_config(cfg.model, cfg.get("compressor"))
    out_dir = spec.default_dir(cfg.paths.models_dir, cfg.task.name)
    if spec.checkpoint:
        raise ValueError("train.py writes to paths.models_dir; model.checkpoint is for evaluate.py")
    if (out_dir / "config.json").exists() and not cfg.get("overwrite", False):
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass overwrite=true to train it again")
    dataset = load_task_data(cfg)
    logger = make_wandb_logger(
        cfg.get("logger"),
        save_dir=cfg.paths.output_dir,
        name=f"train-{cfg.task.name}-{spec.name}",
        job_type="train",
        config=to_container(cfg),
    )
    path = build_checkpoint(spec, cfg, dataset, logger=logger)
    if logger is not None:
        logger.experiment.finish()
    meta = read_metadata(path)
    if "best_val_loss" in meta:  # extractive QA selects by validation loss
        print(f"checkpoint: {path}  best val loss: {meta.get('best_val_loss')}")
    else:
        print(f"checkpoint: {path}  best val acc: {meta.get('best_val_acc')}")
    return {"checkpoint": str(path), **meta}


# ---------------------------------------------------------------- evaluate
def _limit(split, n: int | None, seed: int = 0):
    """``n`` examples chosen by a seeded hash of their ids: the same ones whatever the file order, and a
    random sample (files sorted by label, like IMDB's, would otherwise give one class)."""
    if not n or n >= len(split):
        return split
    ids = split["id"]
    keep = sorted(range(len(ids)), key=lambda i: hash_unit(ids[i], seed))[:n]
    return split.select(sorted(keep))


def _ood_limit(cfg: DictConfig, name: str, default: int | None) -> int | None:
    """``limit_ood_examples`` for the OOD set ``name`` ("<task>/<split>"): an int for every set, or a mapping
    by set name (COVID-QA's long articles cost ~25 windows a question); ``null`` or absent: ``default``."""
    wanted = cfg.get("limit_ood_examples")
    if isinstance(wanted, Mapping | DictConfig):
        return wanted.get(name, default)
    return default if wanted is None else int(wanted)


def _aligned(data, outputs: ModelOutputs):
    """The rows of ``data`` in the example order of ``outputs``."""
    order = {int(i): k for k, i in enumerate(data["id"])}
    return data.select([order[int(i)] for i in outputs.example_ids.tolist()])


def _collect_extras(
    char: Characteristic,
    spec_fp: str,
    outputs: ModelOutputs,
    cache: OutputCache,
    load,
    data,
    task_cfg: Mapping[str, Any],
    split: str,
) -> ModelOutputs:
    """Run ``char.collect`` once per model (cached), attach its result to ``outputs.extras``."""
    key = content_key(
        kind="extras",
        characteristic=char.name,
        config=dict(char.cache_config()),
        checkpoint=spec_fp,
        task=task_cfg["name"],
        split=split,
        ids=content_key(ids=outputs.example_ids.tolist()),
    )
    extras = cache.load_extras(key)
    if extras is None:
        extras = dict(char.collect(load(), outputs, _aligned(data, outputs), task_cfg))
        cache.save_extras(key, extras)
    return dataclasses.replace(outputs, extras={**outputs.extras, char.name: extras})


def _replay_extras(
    char: Characteristic,
    fps: Mapping[str, str],
    loads: Mapping[str, Any],
    outputs: dict[str, ModelOutputs],
    cache: OutputCache,
    data,
    task_cfg: Mapping[str, Any],
    split: str,
    boxes: Mapping[str, list] | None = None,
) -> None:
    """Run ``char.replay`` once per model (cached) after all collects; attach the result to
    ``extras[char.name]["replay"]``.

    ``loads[name]()`` returns the loaded model; ``boxes[name]`` (emptied after use) holds it.

    Each model sees the other models' collect extras as they were before any replay, so the result does not
    depend on the order of the models; the cache key holds those extras' content.
    """
    before = dict(outputs)
    results: dict[str, Any] = {}
    for name, out in before.items():
        others = {n: o for n, o in before.items() if n != name}
        key = content_key(
            kind="replay",
            characteristic=char.name,
            config=dict(char.cache_config()),
            checkpoint=fps[name],
            task=task_cfg["name"],
            split=split,
            ids=content_key(ids=out.example_ids.tolist()),
            others={n: content_key(extras=o.extras.get(char.name)) for n, o in others.items()},
        )
        replayed = cache.load_extras(key)
        if replayed is None:
            replayed = dict(char.replay(loads[name](), out, others, _aligned(data, out), task_cfg))
            cache.save_extras(key, replayed)
            if boxes is not None:
                boxes[name].clear()  # free the model before the next one
        results[name] = replayed
    for name, replayed in results.items():
        out = before[name]
        merged = {**(out.extras.get(char.name) or {}), "replay": replayed}
        outputs[name] = dataclasses.replace(out, extras={**out.extras, char.name: merged})


def ood_sets(cfg: DictConfig, task_cfg: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], Any]]:
    """``"<task>/<split>" -> (task config, split data)`` for the out-of-distribution sets to score.

    Each entry of ``cfg.ood`` (default: ``task.ood``) is ``"<task>/<split>"``; ``"<split>"`` alone means a
    split of the evaluated task (e.g. MNLI's mismatched sample). A trailing ``?`` makes the set optional: when
    its data cannot be loaded (no local file, hub unreachable) it is skipped with a warning.

    Raises:
        ValueError: an unknown task or split, or an OOD task whose label names differ from the task's.
    """
    wanted = cfg.get("ood")
    wanted = list(wanted if wanted is not None else task_cfg.get("ood") or [])
    sets: dict[str, tuple[dict[str, Any], Any]] = {}
    data_dir = cfg.paths.get("data_dir")
    for entry in wanted:
        optional = entry.endswith("?")
        entry = entry.rstrip("?")
        name, _, split = entry.rpartition("/")
        name = name or task_cfg["name"]
        path = CONF_DIR / "task" / f"{name}.yaml"
        if not path.exists():
            raise ValueError(
                f"unknown OOD task '{name}' in {entry!r}; available: {', '.join(available('task'))}"
            )
        other = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if [*other["label_names"]] != [*task_cfg["label_names"]]:
            raise ValueError(
                f"OOD set {entry} has labels {other['label_names']} but {task_cfg['name']} has "
                f"{task_cfg['label_names']}: an OOD set must share the task's label names"
            )
        other["max_length"] = task_cfg["max_length"]  # score it as the model sees its own task
        if "doc_stride" in task_cfg:
            other["doc_stride"] = task_cfg["doc_stride"]
        try:
            dataset = _load_data(other, data_dir)
        except (OSError, ValueError) as err:  # FileNotFoundError and ConnectionError are OSErrors
            if not optional:
                raise
            log.warning("optional OOD set %s not available, skipped: %s", entry, str(err).splitlines()[0])
            continue
        if split not in dataset:
            raise ValueError(f"OOD set {entry}: task {name} has no split '{split}' (has {list(dataset)})")
        sets[f"{other['name']}/{split}"] = (other, dataset[split])  # qa/subjqa -> subjqa/test
    return sets


def _qa_thresholding(task_cfg, dataset, run, name: str):
    """For extractive QA: the function that decides one model's answers at its no-answer threshold (the
    configured number, or chosen on the validation split: ``task.null_score_diff_threshold=validation``)."""

    def validation():
        if "validation" not in dataset:
            raise ValueError(
                f"task {task_cfg['name']}: null_score_diff_threshold=validation needs a validation split; "
                f"it has {list(dataset)} (set a number instead)"
            )
        return run(dataset["validation"], task_cfg, "validation", f"{name}/validation")

    info = null_threshold_for(task_cfg, validation)
    return lambda out: apply_null_threshold(out, info["null_score_diff_threshold"], info)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Compare the reference with each candidate on the task's evaluation split(s).

    Writes results.json, predictions/, figures/, tables/ and report.md into ``paths.output_dir`` and logs to
    W&B; returns ``{"metrics": ..., "output_dir": ..., "cached": {model: bool}}``.
    """
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = OutputCache(cfg.paths.cache_dir)
    memo = Path(cfg.paths.cache_dir) / "fingerprints.json"
    task_cfg = _plain(cfg.task)
    reference, candidates = model_specs(cfg)
    characteristics = build_characteristics(cfg)
    dataset = load_task_data(cfg)
    if cfg.get("splits"):
        splits = list(cfg.splits)
    else:  # an extra split the data lacks (an optional source, e.g. AdvGLUE, not available) is skipped
        extra = list(task_cfg.get("extra_splits", []))
        absent = [s for s in extra if s not in dataset]
        if absent:
            log.warning("task %s: extra split(s) %s not available; skipped", task_cfg["name"], absent)
        splits = [task_cfg["eval_split"], *[s for s in extra if s in dataset]]
    missing = [s for s in splits if s not in dataset]
    if missing:
        raise ValueError(f"task {task_cfg['name']} has no split(s) {missing}; it has {list(dataset)}")

    # Each split (and OOD set) limited once: the same rows for every model and for the replay pass.
    limit = cfg.get("limit_examples")
    split_data = {s: _limit(dataset[s], limit) for s in splits}
    ood = ood_sets(cfg, task_cfg) if any(c.needs_ood for c in characteristics) else {}
    ood = {name: (t, _limit(d, _ood_limit(cfg, name, limit))) for name, (t, d) in ood.items()}
    specs = [reference, *candidates]
    identities: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, ModelOutputs]] = {s: {} for s in splits}
    cached: dict[str, bool] = {}
    predict_cfg = _plain(cfg.predict)
    # Extractive QA (task kind qa) loads and predicts through trustequiv.qa; the rest is shared.
    load_model = load_qa_model if is_qa(task_cfg) else load_classifier
    predict = predict_qa_outputs if is_qa(task_cfg) else predict_outputs
    fps: dict[str, str] = {}
    loads: dict[str, Any] = {}
    boxes: dict[str, list] = {}
    for spec in specs:
        checkpoint = ensure_checkpoint(spec, cfg, dataset, allow_train=bool(cfg.get("train_missing", False)))
        directory = local_dir(checkpoint, spec.revision)
        fp = fingerprint(directory, memo)
        identities[spec.name] = {
            "checkpoint": str(directory),
            "fingerprint": fp,
            "metadata": read_metadata(directory),
        }
        loaded_box: list = []

        def load(spec=spec, checkpoint=checkpoint, loaded_box=loaded_box):
            if not loaded_box:  # load at most once per model, and only if something is not cached
                loaded_box.append(
                    load_model(
                        checkpoint,
                        list(task_cfg["label_names"]),
                        declared_label_names=spec.label_names,
                        revision=spec.revision,
                        trust_remote_code=spec.trust_remote_code,
                        memo_file=memo,
                    )
                )
            return loaded_box[0]

        fps[spec.name], loads[spec.name], boxes[spec.name] = fp, load, loaded_box

        def run(data, task, split, key, spec=spec, fp=fp, load=load):
            out, was_cached = predict(
                spec.name,
                fp,
                load,
                data,
                task_cfg=task,
                split=split,
                cache=cache,
                trainer_cfg=_plain(cfg.trainer),
                predict_cfg=predict_cfg,
                declared_label_names=spec.label_names,
            )
            cached[key] = was_cached
            return out

        post = _qa_thresholding(task_cfg, dataset, run, spec.name) if is_qa(task_cfg) else (lambda out: out)
        ood_outputs: dict[str, ModelOutputs] = {}
        for ood_name, (ood_task, ood_data) in ood.items():
            split = ood_name.rpartition("/")[2]
            ood_outputs[ood_name] = post(run(ood_data, ood_task, split, f"{spec.name}/{ood_name}"))
        for split, data in split_data.items():
            out = post(run(data, task_cfg, split, f"{spec.name}/{split}"))
            if ood_outputs:
                out = dataclasses.replace(out, extras={**out.extras, "ood": ood_outputs})
            for char in characteristics:
                if char.needs_model and char.runs_on(split):
                    out = _collect_extras(char, fp, out, cache, load, data, task_cfg, split)
            outputs[split][spec.name] = out
        loaded_box.clear()  # free the model before the next one
    for char in characteristics:  # cross-model second pass (e.g. adversarial transfer)
        if char.needs_model and char.needs_replay:
            for split, data in split_data.items():
                if char.runs_on(split):
                    _replay_extras(char, fps, loads, outputs[split], cache, data, task_cfg, split, boxes)

    metrics: dict[str, float] = {}
    results: dict[str, CharacteristicResult] = {}
    figure_paths: dict[str, Path] = {}
    all_tables: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        ref_out = outputs[split][reference.name]
        cand_outs = [outputs[split][c.name] for c in candidates]
        prefix = "" if split == splits[0] else f"{split}/"
        for char in characteristics:
            if not char.runs_on(split):
                continue
            res = char.evaluate(ref_out, cand_outs)
            label = f"{prefix}{char.name}"
            results[label] = res
            metrics.update({f"{label}/{k}": float(v) for k, v in res.metrics.items()})
            figs = save_figures(
                {f"{char.name}_{k}": f for k, f in res.figures.items()}, out_dir / "figures" / split
            )
            figure_paths.update({f"{label}_{k}": p for k, p in zip(res.figures, figs.values(), strict=True)})
            all_tables.update({f"{label}/{k}": rows for k, rows in res.tables.items()})
            write_per_example(res.per_example, out_dir / "per_example" / split)
        pred_dir = out_dir / "predictions" if split == splits[0] else out_dir / "predictions" / split
        for name, out in outputs[split].items():
            write_predictions(out, pred_dir / f"{name}.csv")

    model_names = [s.name for s in specs]
    pair_names = [pair_name(reference.name, c.name) for c in candidates]
    headline = {
        f"models on {cfg.task.name}/{splits[0]}": headline_rows(metrics, model_names, MODEL_HEADLINE),
        f"{reference.name} vs candidates": headline_rows(metrics, pair_names, PAIR_HEADLINE),
    }
    seconds = round(time.time() - started, 1)
    config = to_container(cfg)
    write_results(
        out_dir / "results.json",
        metrics,
        task=cfg.task.name,
        splits=splits,
        reference=reference.name,
        candidates=[c.name for c in candidates],
        models=identities,
        cached=cached,
        seconds=seconds,
        notes={label: res.notes for label, res in results.items() if res.notes},
        config=config,
    )
    n = {s: len(next(iter(outputs[s].values()))) for s in splits}
    write_report(
        out_dir / "report.md",
        title=f"trustequiv: {reference.name} vs {', '.join(c.name for c in candidates)} on {cfg.task.name}",
        summary=[
            f"Splits: {', '.join(f'{s} ({n[s]} examples)' for s in splits)}. Wall time {seconds} s.",
            f"Reference: `{identities[reference.name]['checkpoint']}`.",
            *[f"Candidate {c.name}: `{identities[c.name]['checkpoint']}`." for c in candidates],
        ],
        headline=headline,
        results=results,
        figure_paths=figure_paths,
        findings={p: pair_findings(metrics, p, float(cfg.get("min_effect", 0.005))) for p in pair_names},
    )
    wb = make_wandb_logger(
        cfg.get("logger"),
        save_dir=out_dir,
        name=f"{cfg.task.name}-{'-'.join(c.name for c in candidates)}",
        job_type="evaluate",
        config=config,
    )
    log_evaluation(wb, metrics, {k.replace("/", "_"): v for k, v in figure_paths.items()}, all_tables)
    print_headline(headline)
    return {"metrics": metrics, "output_dir": str(out_dir), "cached": cached, "seconds": seconds}
