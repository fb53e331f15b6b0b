"""Content-addressed cache of model outputs, resumable at batch granularity, safe to share between runs.

Layout under ``root``::

    outputs/<key[:2]>/<key>.safetensors          entry: example_id, [logits], labels, [embeddings, correct]
    outputs/<key[:2]>/<key>.json                 its metadata (model, task, split, label names, checkpoint)
    outputs/<key[:2]>/<key>.partial/*.safetensors  batches written so far by an unfinished prediction
    extras/<key[:2]>/<key>.json                  per-model characteristic results (attributions, attacks)
    locks/<key[:2]>/<key>.lock                   held while an entry is checked and computed
    corrupt/                                     entries and files set aside as unreadable

The key is a SHA-256 of the content that determines the outputs: checkpoint fingerprint, task, split, the
split's content fingerprint (:func:`trustequiv.data.splits.split_fingerprint`) and the prediction settings.
Files
are written to a temporary name and renamed, so a killed run leaves either a whole file or none; a corrupt
entry is moved aside and recomputed. Two runs on one cache serialise on the entry's lock file (``filelock``,
an OS lock released when its process dies, so a killed run never leaves a stale lock): the second waits and
then reads the first's finished entry instead of writing the same partial dir. A file the user may not read
or a cache dir they may not write is an error naming the path and the fix, never mistaken for corruption.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file

from trustequiv.outputs import ModelOutputs
from trustequiv.user_errors import UserError

log = logging.getLogger(__name__)

_TENSORS = ("example_id", "logits", "labels", "embeddings", "correct")
# errnos that mean "not allowed to write here" rather than a transient or disk failure
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CachePermissionError(PermissionError):
    """A cache file or directory exists but this user may not read it: not corruption, so nothing is moved."""


class CacheNotWritableError(PermissionError):
    """The cache directory (``paths.cache_dir``) cannot be written by this user or is on a read-only disk."""


class NotAFileError(UserError, IsADirectoryError):
    """A directory where the cache (or a run) keeps a file. Not moved aside as corruption is: it may hold the
    user's own files, so the run stops and names it."""


def content_key(**parts: Any) -> str:
    """SHA-256 hex digest of the JSON of ``parts`` (keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@functools.cache
def run_id() -> str:
    """A run directory name unique across processes and hosts: ``YYYY-mm-dd_HH-MM-SS_<pid>_<4 hex>``.

    The OmegaConf resolver ``${run_id:}`` (``conf/hydra/default.yaml``'s run and sweep dirs). Two runs started
    in the same second got one ``${now:...}`` dir and overwrote each other's results; the pid and a random
    suffix (hosts sharing a filesystem can reuse pids) separate them. Memoised: every call in one process
    returns the same value, so the jobs of one ``-m`` sweep share their sweep dir (register the resolver with
    ``use_cache=True`` too: Hydra copies resolver caches from the sweep's config into each job's).
    """
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}_{secrets.token_hex(2)}"


CACHE_FIX = "set paths.cache_dir to a writable directory (e.g. paths.cache_dir=$HOME/.cache/trustequiv)"
LOCK_FIX = "make its directory writable, or set the path that names it (e.g. paths.models_dir) elsewhere"


def not_writable(path: Path, err: OSError, fix: str = CACHE_FIX) -> CacheNotWritableError:
    """The one-line error for a path that cannot be written (``err``: the OS error; ``fix``: what to do)."""
    why = err.strerror or type(err).__name__
    return CacheNotWritableError(f"cannot write {path} ({why}): it is read-only for this user; {fix}")


def not_readable(path: Path, err: OSError | None = None) -> CachePermissionError:
    """The one-line error for a cache file this user may not read."""
    why = err.strerror if err is not None and err.strerror else "permission denied"
    return CachePermissionError(
        f"cannot read cache file {path} ({why}): give this user read access (chmod/chown it, e.g. "
        f"`chmod -R u+rwX {path.parent}`) or set paths.cache_dir to a cache directory of your own"
    )


def not_a_file(path: Path) -> NotAFileError:
    """The one-line error for a directory found where a file belongs (``path``)."""
    return NotAFileError(
        f"{path} is a directory, where a file belongs",
        "move that directory elsewhere (or remove it); the file is then made again",
    )


@contextlib.contextmanager
def _writing(path: Path, fix: str = CACHE_FIX) -> Iterator[None]:
    """Turn a permission/read-only failure while writing ``path`` into :class:`CacheNotWritableError`, a
    directory in its place into :class:`NotAFileError`; a full disk keeps its OSError (the CLI's one line,
    :func:`trustequiv.user_errors.describe`) but gains the path when it lacks one (write() errors name
    none)."""
    try:
        yield
    except (CacheNotWritableError, NotAFileError):
        raise
    except OSError as err:
        if err.errno in _NOT_WRITABLE or isinstance(err, PermissionError):
            raise not_writable(path, err, fix) from err
        if err.errno == errno.EISDIR:  # (its filename may be the temporary file os.replace renamed)
            raise not_a_file(path) from err
        if err.errno == errno.ENOSPC and not err.filename:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


def _check_readable(path: Path) -> None:
    """Open ``path`` once so a permission problem surfaces as such: safetensors reports any failure to open
    a file as "No such file or directory".

    Raises:
        CachePermissionError: this user may not read it.
    """
    try:
        with path.open("rb"):
            pass
    except PermissionError as err:
        raise not_readable(path, err) from err
    except IsADirectoryError as err:
        raise not_a_file(path) from err


def _read_bytes(path: Path) -> bytes:
    """``path``'s bytes. Raises :class:`CachePermissionError` if this user may not read it,
    :class:`NotAFileError` if it is a directory."""
    try:
        return path.read_bytes()
    except PermissionError as err:
        raise not_readable(path, err) from err
    except IsADirectoryError as err:
        raise not_a_file(path) from err


def _exists(path: Path) -> bool:
    """``path.exists()``, but an unsearchable parent is a permission error, not absence."""
    try:
        return path.exists()
    except PermissionError as err:
        raise not_readable(path, err) from err


def ensure_writable(root: str | Path) -> Path:
    """Create ``root`` if needed and check this user can create files in it (by creating one).

    Raises:
        CacheNotWritableError: it cannot be created or written (permissions, read-only filesystem).
    """
    root = Path(root)
    with _writing(root):
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
        os.close(fd)
        os.unlink(probe)
    return root


def _temp_name(path: Path) -> Path:
    # Beside ``path`` (os.replace is atomic only within one filesystem); pid and random part: two writers of
    # one path, in two processes or two threads, never share a temporary file.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to ``path`` (safetensors) through a temporary file and a rename."""
    path = Path(path)
    tmp = _temp_name(path)
    with _writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            except Exception as err:  # safetensors reports a full disk as a SafetensorError, not an OSError
                if "No space left on device" not in str(err) or isinstance(err, OSError):
                    raise
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, fix: str = CACHE_FIX, **kwargs: Any) -> Iterator[Any]:
    """``open(path, mode, **kwargs)`` for writing, made atomic: the block writes a temporary file beside
    ``path``, renamed over it when the block ends without an exception. A run killed (even ``kill -9``) or
    failing mid-write leaves the old file whole, or none; never half a file. Text is UTF-8 unless
    ``encoding`` says otherwise; ``fix`` is what a permission error tells the user to do.

    Raises:
        CacheNotWritableError: the directory cannot be written. NotAFileError: ``path`` is a directory.
        OSError: a full disk (with the path; the CLI says so in one line).
    """
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    tmp = _temp_name(path)
    with _writing(path, fix):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open(mode, **kwargs) as fh:
                yield fh
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind either


def atomic_write_text(text: str, path: str | Path, *, fix: str = CACHE_FIX) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename, as :func:`atomic_open` does: a
    killed or failed write leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = _temp_name(path)
    with _writing(path, fix):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def quarantine_file(path: Path, err: Exception, corrupt_dir: Path | None = None) -> Path:
    """Move an unreadable (malformed) file aside into ``corrupt_dir`` (default ``<its dir>/corrupt``), log a
    warning, and return where it went; the caller recomputes what it held.

    Raises:
        CacheNotWritableError: it cannot be moved (the directory is read-only).
    """
    bad = corrupt_dir if corrupt_dir is not None else path.parent / "corrupt"
    dest = bad / path.name
    with _writing(bad):
        bad.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))
    why = f"{type(err).__name__}: {err}"
    log.warning("cache file %s was corrupt (%s); moved to %s and recomputing", path.name, why, bad)
    return dest


def distributed_rank() -> int:
    """This process's global rank in a distributed (DDP) job, 0 when not distributed.

    From ``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK`` (set by torchrun and by Lightning's launcher for the
    processes it starts; any non-zero one means not rank 0), ``SLURM_PROCID`` when SLURM started several
    tasks, else ``torch.distributed`` once initialised.
    """
    names = ["RANK", "LOCAL_RANK", "NODE_RANK"]
    if os.environ.get("SLURM_NTASKS", "1").strip() not in ("", "0", "1"):
        names.append("SLURM_PROCID")
    for var in names:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) != 0:
            return int(value)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


@contextlib.contextmanager
def _hold(lock_file: Path, what: str, *, any_rank: bool = False, fix: str = CACHE_FIX) -> Iterator[None]:
    """Hold an OS file lock on ``lock_file`` for the block, logging when another process holds it first.

    Reentrant within a thread (one lock object per path). Unless ``any_rank``, a no-op on non-zero ranks of
    a distributed job: rank 0 holds it for the job, and a rank waiting here would stall the collective work
    (DDP prediction or training) that rank 0 started while holding it.
    """
    if distributed_rank() > 0 and not any_rank:
        yield
        return
    with _writing(lock_file, fix):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file), is_singleton=True)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("%s is locked by another run (lock file %s); waiting for it to finish", what, lock_file)
            started = time.monotonic()
            lock.acquire()
            log.info("%s: lock acquired after %.0f s", what, time.monotonic() - started)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def path_lock(path: str | Path, fix: str = LOCK_FIX) -> Iterator[None]:
    """Hold the lock ``<path>.lock`` (beside ``path``) for the block: one process at a time builds ``path``
    (e.g. a checkpoint dir). Another process waits (a log line says so) and should then re-check whether
    ``path`` was made while it waited. Released when the block exits or the process dies; reentrant within
    a thread; a no-op on non-zero ranks of a distributed job (rank 0 holds it for the job).

    ``fix``: what the error tells the user to do if the lock file cannot be created.

    Raises:
        CacheNotWritableError: the lock file cannot be created (read-only directory).
    """
    path = Path(path)
    with _hold(path.with_name(f"{path.name}.lock"), str(path), fix=fix):
        yield


def _sorted_ids(ids: Iterable[int] | torch.Tensor) -> list[int]:
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return sorted({int(i) for i in values})


class OutputCache:
    """Model outputs and per-model extras keyed by content.

    Args:
        root: cache directory (``paths.cache_dir``); created if missing.

    Raises:
        CacheNotWritableError: ``root`` cannot be created or written (fix: a writable ``paths.cache_dir``).
    """

    def __init__(self, root: str | Path):
        self.root = ensure_writable(root)

    # -- paths
    def _entry(self, key: str) -> Path:
        return self.root / "outputs" / key[:2] / key

    def tensors_path(self, key: str) -> Path:
        return self._entry(key).with_suffix(".safetensors")

    def meta_path(self, key: str) -> Path:
        return self._entry(key).with_suffix(".json")

    def partial_dir(self, key: str) -> Path:
        return self._entry(key).with_suffix(".partial")

    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / key[:2] / f"{key}.lock"

    @contextlib.contextmanager
    def lock(self, key: str, *, any_rank: bool = False) -> Iterator[None]:
        """Hold entry ``key``'s lock (``locks/<key[:2]>/<key>.lock``) for the block: check the cache, predict
        and save inside it, and a second process on the same entry waits, then finds the finished entry.
        Reentrant within a thread; unless ``any_rank``, a no-op on non-zero ranks of a distributed job (see
        :func:`_hold`)."""
        with _hold(self.lock_path(key), f"cache entry {key[:12]}", any_rank=any_rank):
            yield

    # -- finished entries
    def load(self, key: str, name: str, expected_ids: Iterable[int] | None = None) -> ModelOutputs | None:
        """The cached outputs for ``key`` renamed ``name``, or None if absent.

        A corrupt entry, or one whose example ids (as a set) differ from ``expected_ids`` when given, is moved
        to ``corrupt/`` and None returned, so the caller recomputes it.

        Raises:
            CachePermissionError: a file of the entry exists but this user may not read it.
        """
        tpath, mpath = self.tensors_path(key), self.meta_path(key)
        if not _exists(tpath) or not _exists(mpath):
            return None
        raw = _read_bytes(mpath)
        _check_readable(tpath)
        try:
            meta = json.loads(raw)
            t = load_file(str(tpath))
            out = ModelOutputs(
                name=name,
                example_ids=t["example_id"],
                logits=t.get("logits"),
                labels=t["labels"],
                label_names=tuple(meta["label_names"]),
                embeddings=t.get("embeddings"),
                correct=t["correct"].bool() if "correct" in t else None,
            )
        except Exception as err:  # any parse/shape error means the entry cannot be trusted
            if not os.access(tpath, os.R_OK):  # e.g. access revoked between the check and the read
                raise not_readable(tpath) from err
            self._quarantine(key, err)
            return None
        if expected_ids is not None:
            want, have = _sorted_ids(expected_ids), _sorted_ids(out.example_ids)
            if want != have:
                self._quarantine(
                    key,
                    ValueError(f"it holds {len(have)} example ids, not the {len(want)} requested"),
                )
                return None
        return out

    def _quarantine(self, key: str, err: Exception) -> None:
        for p in (self.tensors_path(key), self.meta_path(key)):
            if p.exists():
                quarantine_file(p, err, self.root / "corrupt")

    def save(self, key: str, outputs: ModelOutputs, meta: Mapping[str, Any]) -> None:
        """Write the entry: tensors, then metadata (an entry counts as present only when both exist).

        Raises:
            CacheNotWritableError: the cache directory is not writable.
        """
        tensors = {"example_id": outputs.example_ids, "labels": outputs.labels}
        if outputs.logits is not None:
            tensors["logits"] = outputs.logits
        if outputs.embeddings is not None:
            tensors["embeddings"] = outputs.embeddings
        if outputs.correct is not None:
            tensors["correct"] = outputs.correct.to(torch.uint8)
        atomic_save(tensors, self.tensors_path(key))
        atomic_write_text(
            json.dumps({**meta, "label_names": list(outputs.label_names)}, indent=2, default=str),
            self.meta_path(key),
        )

    # -- unfinished predictions
    def partial_files(self, key: str) -> list[dict[str, torch.Tensor]]:
        """Each batch file written so far for ``key`` (a killed prediction's work); unreadable ones (a write
        cut short) are deleted and left out.

        Raises:
            CachePermissionError: a batch file exists but this user may not read it.
        """
        d = self.partial_dir(key)
        parts = []
        for f in sorted(d.glob("*.safetensors")) if _exists(d) and d.is_dir() else []:
            _check_readable(f)
            try:
                parts.append(load_file(str(f)))
            except Exception:
                f.unlink(missing_ok=True)
        return parts

    def clear_partial(self, key: str) -> None:
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)

    # -- extras (per-model characteristic results; JSON so nothing is ever unpickled)
    def extras_path(self, key: str) -> Path:
        return self.root / "extras" / key[:2] / f"{key}.json"

    def load_extras(self, key: str) -> dict[str, Any] | None:
        """The extras saved under ``key``, or None if absent. A malformed file (not JSON, or JSON that is not
        an object) is moved to ``corrupt/`` and None returned, so the caller recomputes it.

        Raises:
            CachePermissionError: the file exists but this user may not read it.
        """
        p = self.extras_path(key)
        if not _exists(p):
            return None
        raw = _read_bytes(p)
        try:
            data = json.loads(raw)
        except ValueError as err:  # JSONDecodeError, or bytes that are not text
            self._quarantine_file(p, err)
            return None
        if not isinstance(data, dict):
            self._quarantine_file(p, TypeError(f"expected a JSON object, found {type(data).__name__}"))
            return None
        return data

    def _quarantine_file(self, path: Path, err: Exception) -> None:
        quarantine_file(path, err, self.root / "corrupt")

    def save_extras(self, key: str, extras: Mapping[str, Any]) -> None:
        atomic_write_text(json.dumps(extras, default=str), self.extras_path(key))


@functools.cache
def _prediction_writer() -> type:
    # Defined on first use: importing lightning takes seconds, and most users of this module never predict.

    class PartialPredictionWriter(BasePredictionWriter):
        """Writes each predicted batch to the cache's partial dir when it finishes: a killed run resumes
        there.

        ``keys``: the prediction entries written (default: the classification outputs); ``id_key`` names the
        entry whose first value goes into the file name (a resumed run's files never overwrite earlier ones).
        """

        def __init__(
            self, directory: str | Path, keys: tuple[str, ...] = _TENSORS, id_key: str = "example_id"
        ):
            super().__init__(write_interval="batch")
            self.directory = Path(directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.keys, self.id_key = keys, id_key

        def write_on_batch_end(
            self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
        ):
            first = int(prediction[self.id_key][0]) if len(prediction[self.id_key]) else 0
            name = f"r{trainer.global_rank}-b{batch_idx:06d}-{first}.safetensors"
            atomic_save({k: prediction[k] for k in self.keys if k in prediction}, self.directory / name)

    # Pickles and prints as trustequiv.cache.PartialPredictionWriter (found again through __getattr__).
    PartialPredictionWriter.__module__ = __name__
    PartialPredictionWriter.__qualname__ = "PartialPredictionWriter"
    return PartialPredictionWriter


def __getattr__(name: str) -> Any:
    # PEP 562: ``from trustequiv.cache import PartialPredictionWriter`` builds the class on first access.
    if name == "PartialPredictionWriter":
        return _prediction_writer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
