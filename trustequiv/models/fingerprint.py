"""Content fingerprints of checkpoints: :func:`fingerprint` (SHA-256 over a checkpoint directory's model
files) and :func:`file_digest` (one file's), memoised in a JSON file keyed by path, size, mtime, ctime and
inode so large weights are hashed once; a malformed memo is set aside and rebuilt, and concurrent runs merge
their entries under its lock."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trustequiv.cache import (
    CACHE_FIX,
    atomic_write_text,
    not_a_file,
    not_readable,
    path_lock,
    quarantine_file,
)

# Files that define a checkpoint's behaviour; anything else in the dir (logs, README) is not hashed.
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def _load_memo(memo_file: Path) -> dict[str, str]:
    """The fingerprint memo (file key -> SHA-256), ``{}`` if absent; a malformed one (not JSON, not an object
    of strings) is moved to ``<its dir>/corrupt/`` and ``{}`` returned, so the digests are recomputed.

    Raises:
        trustequiv.cache.CachePermissionError: it exists but this user may not read it.
    """
    try:
        raw = memo_file.read_bytes()
    except FileNotFoundError:
        return {}
    except PermissionError as err:
        raise not_readable(memo_file, err) from err
    except IsADirectoryError as err:
        raise not_a_file(memo_file) from err
    try:
        memo = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, or bytes that are not text
        quarantine_file(memo_file, err)
        return {}
    if not isinstance(memo, dict) or not all(isinstance(v, str) for v in memo.values()):
        quarantine_file(memo_file, TypeError("expected a JSON object of digests"))
        return {}
    return memo


def _memo_key(path: Path, st: os.stat_result) -> str:
    # Size and mtime alone let a same-size file copied in with its time kept (cp -p, rsync -t, an archive's
    # fixed times) pass for the old one, which was then served its cached outputs. The inode change time
    # cannot be set by a user and moves on every write, utime, chmod or rename into place (and rsync or tar
    # give a new inode), so such a copy gets a new key; at worst a file is hashed again.
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _digest(path: Path, memo: dict[str, str], new: dict[str, str]) -> str:
    """SHA-256 of ``path``'s bytes: from ``memo`` when its key (:func:`_memo_key`) is there, else hashed
    and added to ``new``."""
    key = _memo_key(path, path.stat())
    digest = memo.get(key)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
        digest = new[key] = h.hexdigest()
    return digest


def _save_memo(memo_path: Path | None, new: dict[str, str]) -> None:
    if new and memo_path is not None:
        # Re-read under the lock and merge: another run may have added entries since we read it.
        with path_lock(memo_path, fix=CACHE_FIX):
            atomic_write_text(json.dumps({**_load_memo(memo_path), **new}), memo_path)


def file_digest(path: str | Path, memo_file: str | Path | None = None) -> str:
    """SHA-256 of one file's bytes, memoised in ``memo_file`` as :func:`fingerprint` does (e.g. an ONNX
    model's external data).

    Raises:
        trustequiv.cache.CachePermissionError, trustequiv.cache.CacheNotWritableError: as
            :func:`fingerprint`.
    """
    memo_path = None if memo_file is None else Path(memo_file)
    new: dict[str, str] = {}
    digest = _digest(Path(path).resolve(), {} if memo_path is None else _load_memo(memo_path), new)
    _save_memo(memo_path, new)
    return digest


def fingerprint(directory: str | Path, memo_file: str | Path | None = None) -> str:
    """SHA-256 over the names and bytes of a checkpoint directory's model files (config, weights, tokenizer,
    trustequiv.json). Memoised in ``memo_file`` by path, size, mtime, ctime and inode (:func:`_memo_key`)
    so large weights are hashed once; a malformed memo is set aside and rebuilt, and concurrent runs merge
    their entries under its lock.

    Raises:
        trustequiv.cache.CachePermissionError: the memo exists but this user may not read it.
        trustequiv.cache.CacheNotWritableError: the memo cannot be written (read-only ``paths.cache_dir``).
    """
    directory = Path(directory).resolve()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES)
    memo_path = None if memo_file is None else Path(memo_file)
    memo = {} if memo_path is None else _load_memo(memo_path)
    outer = hashlib.sha256()
    new: dict[str, str] = {}
    for p in files:
        digest = _digest(p, memo, new)
        outer.update(p.name.encode())
        outer.update(digest.encode())
    _save_memo(memo_path, new)
    return outer.hexdigest()
