"""Errors a person can act on: a known failure ends the run with ONE line on stderr,
``error: <what> - fix: <how>``, and exit status 2; anything else keeps its traceback (status 1).

:class:`UserError` carries ``what`` went wrong and the ``fix``; its subclasses are also the built-in type a
caller may already catch (``except ValueError``, ``except OSError``), so converting a message to one changes
no control flow. Other known types (missing files, the hub, label mismatches, cache permissions, the
ValueErrors of our own config checks, Hydra's unknown config names) are turned into the same line by
:func:`describe`. Both entry points use :func:`reported` around their body and :func:`run` around Hydra;
``HYDRA_FULL_ERROR=1`` shows the full traceback instead.

:func:`check_hub` probes the Hugging Face hub once with a short timeout before the hub libraries are called:
unreachable, they retry for 20-45 s and bury the cause under their retry messages.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from hydra.errors import CompactHydraException, InstantiationException, MissingConfigException
from omegaconf.errors import MissingMandatoryValue

from trustequiv.conf_tree import available

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataFileError",
    "HubUnreachableError",
    "MissingFileError",
    "UserError",
    "check_hub",
    "describe",
    "hub_offline",
    "one_line",
    "reported",
    "run",
]

log = logging.getLogger(__name__)

#: exit status of a known failure (argparse's and Hydra's usage errors use 2 too); 1 stays "a bug".
EXIT_STATUS = 2
#: seconds the hub probe waits (the hub libraries' own timeouts are 10 s per try, retried several times).
HUB_PROBE_TIMEOUT = 5.0

_REPO = Path(__file__).resolve().parent.parent
# Where "our own" checks live: a ValueError raised there is a message for the user, elsewhere maybe a bug.
_OUR_CODE = (
    *(str(_REPO / d) + os.sep for d in ("trustequiv", "plugins")),
    str(_REPO / "evaluate.py"),
    str(_REPO / "train.py"),
)
# Set by run() when it turns on HYDRA_FULL_ERROR itself: children and reported() then know the user did not.
_OWN_FULL_ERROR = "TRUSTEQUIV_HYDRA_FULL_ERROR_SET"


class UserError(Exception):
    """A failure the user can fix: ``what`` went wrong (names the file, key or value) and the ``fix``.

    ``str()`` is ``"<what> - fix: <fix>"``, the text after ``error: `` in the one line.
    """

    def __init__(self, what: str, fix: str):
        self.what = " ".join(str(what).split())
        self.fix = " ".join(str(fix).split())
        super().__init__(f"{self.what} - fix: {self.fix}")

    def __str__(self) -> str:
        return f"{self.what} - fix: {self.fix}"

    def __reduce__(self):  # pickle (DDP workers) through (what, fix), not the joined message
        return type(self), (self.what, self.fix)


class ConfigError(UserError, ValueError):
    """A config value that cannot work (e.g. ``predict.batch_size=0``); ``what`` names the key."""


class DataFileError(UserError, ValueError):
    """A local data file that cannot be read (not UTF-8, no rows); ``what`` names the file (and line)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be what the run needs (corrupt weights, another head, unfitted head)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the run needs is not there."""


class HubUnreachableError(UserError, ConnectionError):
    """The Hugging Face hub cannot be reached, or offline mode forbids it, and nothing local serves."""


# ------------------------------------------------------------------------------------------- messages
# An imperative after ": ", "; " or ". " starts the fix in messages written as "X: do Y" before UserError.
_VERBS = (
    "add|change|check|chmod|choose|compare|declare|delete|drop|fine-tune|fix|give|go|install|make|map|move|"
    "pass|point|put|remove|rename|rerun|run|select|set|train|try|unset|use"
)
_FIX_MARK = re.compile(r"\s*[.;:,]?\s*\bfix(?:es)?\s*:\s*", re.IGNORECASE)
_VERB_MARK = re.compile(rf"(?:[:;]|\.(?<!e\.g\.)(?<!i\.e\.))\s+(?=(?:{_VERBS})\b)", re.IGNORECASE)
_CHOICES_MARK = re.compile(r"[;:,.]?\s*\b(?:available|known|known formats)\s*:\s*", re.IGNORECASE)

_DEFAULT_FIX: tuple[tuple[type[BaseException], str], ...] = (
    (
        FileNotFoundError,
        "check the path, or the setting that names it (paths.*, model.checkpoint, model.path)",
    ),
    (FileExistsError, "remove it, or choose another path"),
    (IsADirectoryError, "move that directory out of the way: a file belongs there"),
    (PermissionError, "give this user access to it, or point the setting that names it (paths.*) elsewhere"),
    (ConnectionError, "check the network, or set HF_HUB_OFFLINE=1 and use local files"),
    (TimeoutError, "check the network, or set HF_HUB_OFFLINE=1 and use local files"),
    (ImportError, "install the missing package (README 'Install' lists the extras)"),
    (ValueError, "correct the value or file named above"),
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def split_message(message: str, default_fix: str) -> tuple[str, str]:
    """``(what, fix)`` of a message written as ``"X. Fix: Y"``, ``"X: do Y"``, ``"X; available: a, b"``;
    ``default_fix`` when it names no fix."""
    text = _one_line(message)
    m = _FIX_MARK.search(text)
    if m and m.start() > 0:
        return text[: m.start()].rstrip(" .;:,"), text[m.end() :].rstrip(" .")
    m = _VERB_MARK.search(text)
    if m and m.start() > 0:
        return text[: m.start()].rstrip(" .;:,"), text[m.end() :].rstrip(" .")
    m = _CHOICES_MARK.search(text)
    if m and m.start() > 0:
        return text[: m.start()].rstrip(" .;:,"), f"choose one of: {text[m.end() :].rstrip(' .')}"
    return text.rstrip(" ."), default_fix


def _raised_in_our_code(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:  # constructed, not raised (tests): treat as ours
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_OUR_CODE)


def _hydra_config_error(err: BaseException) -> tuple[str, str] | None:
    """Hydra's composition and override errors (raised before our code runs) and a known failure inside a
    plugin's constructor, as (what, fix); ``None`` for anything else."""
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or "a config value"
        return f"{key} is not set (its value is ???)", f"set it on the command line: {key}=<value>"
    text = str(err)
    if isinstance(err, InstantiationException):
        # A plugin's constructor refused its settings: known only if what it raised is.
        inner = describe(err.__cause__) if err.__cause__ is not None else None
        if inner is None:
            return None
        key = re.search(r"full_key: (\S+)", text)
        return (f"{key.group(1)}: {inner[0]}" if key else inner[0]), inner[1]
    if not isinstance(err, CompactHydraException | MissingConfigException):
        return None
    m = re.search(r"Could not (?:find|load) '([^']*)'", text)
    if m:
        group, _, name = m.group(1).partition("/")
        try:
            options = available(group)
        except OSError:
            options = []
        if options:
            example = (
                "characteristic=[calibration,errors]"
                if group == "characteristic"
                else f"{group}={options[0]}"
            )
            where = re.match(r"In '([^']+)'", text)
            inside = (
                f" (in {where.group(1)})" if where and where.group(1) not in ("evaluate", "train") else ""
            )
            return (
                f"unknown {group} {name!r}{inside}",
                f"choose one of: {', '.join(options)} (e.g. {example})",
            )
    m = re.search(r"Could not override '([^']*)'", text)
    if m:
        key = m.group(1)
        append = re.search(r"use (\+\S+)", text)
        return (
            f"the config has no key {key!r}",
            "check its spelling (`python evaluate.py --cfg job` prints every key)"
            + (f", or add it with {append.group(1)}" if append else ""),
        )
    first = text.splitlines()[0] if text else type(err).__name__
    return split_message(first, "check the command-line overrides (`python evaluate.py --help`)")


#: what a full disk tells the user to do: the two directories a run writes to are settings.
DISK_FULL_FIX = (
    "free space on that disk, or put the cache (paths.cache_dir=<dir>) or the run dir (hydra.run.dir=<dir>) "
    "on a disk with room; rerun the same command: what is finished is kept in the cache"
)
# A full disk as libraries without an OSError say it (safetensors: "... (os error 28)", Rust's StorageFull).
_DISK_FULL_TEXT = re.compile(r"No space left on device|StorageFull|os error 28\b", re.IGNORECASE)


def _disk_full(err: BaseException) -> tuple[str, str] | None:
    """``(what, fix)`` when ``err`` or what it wraps is a full disk (``ENOSPC``), naming the directory when
    the error names a file; ``None`` otherwise."""

    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        full = isinstance(cause, OSError) and cause.errno == errno.ENOSPC
        if full or (not isinstance(cause, OSError) and _DISK_FULL_TEXT.search(str(cause))):
            filename = getattr(cause, "filename", None) if full else None
            if filename:
                path = Path(os.fsdecode(filename))
                what = f"no space left on the disk of {path.parent} (writing {path.name})"
            else:
                what = "no space left on the disk (writing the cache, paths.cache_dir, or the run dir)"
            return what, DISK_FULL_FIX
        cause = cause.__cause__ or cause.__context__
    return None


def describe(err: BaseException) -> tuple[str, str] | None:
    """``(what, fix)`` for a known failure, ``None`` for anything else (which keeps its traceback).

    Known: :class:`UserError` (also when another exception wraps it with ``raise ... from``), Hydra's
    unknown config names and keys, unset ``???`` values, a full disk (``ENOSPC``, wrapped or not),
    :class:`FileNotFoundError`, :class:`FileExistsError`, :class:`IsADirectoryError`,
    :class:`PermissionError` (the cache's errors included),
    :class:`ConnectionError`, :class:`TimeoutError`, :class:`trustequiv.user_errors.LabelMismatchError`, and
    ValueErrors and ImportErrors raised in this project's code (its checks).
    """
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, UserError):
            return cause.what, cause.fix
        cause = cause.__cause__
    hydra = _hydra_config_error(err)
    if hydra is not None:
        return hydra
    full = _disk_full(err)  # before the types below: any writer, ours or a library's, may hit it
    if full is not None:
        return full

    if isinstance(err, LabelMismatchError):
        return split_message(str(err), "declare the checkpoint's class order with model.label_names=[...]")
    ours_to_judge = isinstance(err, ValueError | ImportError) and not isinstance(err, OSError)
    if ours_to_judge and not _raised_in_our_code(err):
        return None
    for kind, fix in _DEFAULT_FIX:
        if isinstance(err, kind):
            if isinstance(err, OSError) and err.filename and err.strerror:
                # A bare OS error ("[Errno 2] No such file or directory: 'x'"): say it plainly.
                return f"{err.strerror}: {err.filename}", fix
            return split_message(str(err) or type(err).__name__, fix)
    return None


def one_line(err: BaseException) -> str | None:
    """The line a known failure ends with (``error: <what> - fix: <how>``), ``None`` for an unknown one."""
    described = describe(err)
    if described is None:
        return None
    what, fix = described
    return f"error: {_one_line(what)} - fix: {_one_line(fix)}"


def _user_wants_traceback() -> bool:
    return bool(os.environ.get("HYDRA_FULL_ERROR")) and not os.environ.get(_OWN_FULL_ERROR)


def _to_log_files(line: str) -> None:
    # The run's log file keeps the line too; the console handlers would print it a second time.
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _exit_with(line: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_STATUS)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Around an entry point's body: a known failure prints its one line and exits with status 2.

    Inside ``@hydra.main`` this must happen in the body: Hydra catches exceptions of the task function and
    prints "Error executing job ..." and a traceback; SystemExit passes through it. Unknown exceptions, and
    every exception when the user set ``HYDRA_FULL_ERROR=1``, propagate (to :func:`run`: the traceback).

    Raises:
        SystemExit: status 2 after printing the line of a known failure.
    """
    try:
        yield
    except Exception as err:
        line = None if _user_wants_traceback() else one_line(err)
        if line is None:
            raise
        _to_log_files(line)
        _exit_with(line)


def run(main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function so that Hydra's own config errors (an unknown ``task=``,
    ``characteristic=[...]`` name, an unknown key) end in the one line too.

    Hydra composes the config before the task function runs and prints those errors itself in several
    lines (status 1); with ``HYDRA_FULL_ERROR`` set it raises them instead, which is what this turns on (for
    this process and its children, marked as ours so a user's own ``HYDRA_FULL_ERROR=1`` still means
    "show the traceback").

    Raises:
        SystemExit: status 2 for a known failure (after its traceback when the user set
            ``HYDRA_FULL_ERROR=1``), 1 after printing the traceback of another one.
    """
    if not os.environ.get("HYDRA_FULL_ERROR"):
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[_OWN_FULL_ERROR] = "1"
    try:
        main()
    except Exception as err:
        line = one_line(err)
        if line is None or _user_wants_traceback():
            traceback.print_exc()
        if line is None:
            raise SystemExit(1) from None
        _exit_with(line)


# ------------------------------------------------------------------------------------------- the hub
def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub (as huggingface_hub read it at import)."""
    try:  # here, not at the top: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers and datasets
        return True
    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def _probe(endpoint: str, timeout: float) -> str | None:
    """``None`` if ``endpoint`` answers at all (any HTTP status), else why not; once per process."""
    try:  # as hub_offline: huggingface_hub is imported only once the environment is set
        from huggingface_hub.utils import get_session

        # The hub libraries' own session: the same proxies, certificates and headers as the real calls.
        get_session().head(endpoint, timeout=timeout)
    except Exception as err:  # requests or httpx, by version: anything that is not an answer
        # The OS's reason ("[Errno 111] Connection refused") is buried in several wrapped messages.
        text = _one_line(str(err))
        errno = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
        if errno:
            return errno.group(0).strip()
        if "timed out" in text.lower() or "timeout" in type(err).__name__.lower():
            return f"no answer within {timeout:g} s"
        return f"{type(err).__name__}: {text[:120]}"
    return None


def check_hub(what: str, fix: str) -> None:
    """Fail within seconds if the Hugging Face hub is unreachable, before a hub call that would retry for
    20-45 s. Nothing is checked in offline mode (``HF_HUB_OFFLINE=1``: the libraries then fail at once or
    use their cache).

    Args:
        what: what the run was getting, e.g. ``"model 'bert-base-uncased'"``.
        fix: what to do instead (local files); the message adds ``HF_HUB_OFFLINE=1`` and the network.

    Raises:
        HubUnreachableError: the hub did not answer within :data:`HUB_PROBE_TIMEOUT` seconds.
    """
    if hub_offline():
        return

    endpoint = constants.ENDPOINT
    reason = _probe(endpoint, HUB_PROBE_TIMEOUT)
    if reason is not None:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub at {endpoint} to get {what} ({reason})",
            f"{fix}; offline, also set HF_HUB_OFFLINE=1 (cached downloads are then used); online, check the "
            "network, proxy (HTTPS_PROXY) or HF_ENDPOINT",
        )


class LabelMismatchError(ValueError):
    """Two lists of label names cannot be matched one-to-one by name."""
