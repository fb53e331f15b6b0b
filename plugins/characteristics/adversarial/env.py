"""Import TextAttack offline: the NLTK stop-word list it asks for is provided by the project.

``import textattack`` (0.3.11) builds ``StopwordModification()`` at import time (augmentation recipes), which
reads ``nltk.corpus.stopwords.words("english")``; offline that raises ``LookupError: Resource 'stopwords' not
found``. Its first import also calls ``nltk.download`` for six resources
(``textattack.shared.utils.install._post_install``). :func:`import_textattack` writes the explicit English
stop-word list of :mod:`.stopwords` as an NLTK corpus (``<nltk_dir>/corpora/stopwords/english``),
puts that directory first on ``nltk.data.path`` and, while importing, replaces ``nltk.download`` with a no-op
that reports failure (no network is tried). Nothing else that BERT-Attack uses needs NLTK data (its word
splitting is TextAttack's own regex; the POS tagger and WordNet are used only by other recipes, which then
fail with NLTK's own LookupError offline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nltk

from plugins.characteristics.adversarial.stopwords import NLTK_ENGLISH_STOPWORDS

log = logging.getLogger(__name__)

_IMPORTED: dict[str, object] = {}


def default_nltk_dir() -> Path:
    """``$TRUSTEQUIV_NLTK_DATA`` or ``~/.cache/trustequiv/nltk_data``."""
    env = os.environ.get("TRUSTEQUIV_NLTK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "trustequiv" / "nltk_data"


def provide_nltk_stopwords(nltk_dir: str | Path | None = None) -> Path:
    """Write the stop-word list as the NLTK corpus ``stopwords/english`` and put ``nltk_dir`` first on
    ``nltk.data.path``. Returns the directory."""

    root = Path(nltk_dir) if nltk_dir else default_nltk_dir()
    target = root / "corpora" / "stopwords" / "english"
    text = "\n".join(NLTK_ENGLISH_STOPWORDS) + "\n"
    if not target.exists() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".english.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def import_textattack(nltk_dir: str | Path | None = None):
    """``import textattack`` with the project's stop words and without network downloads; returns the module.

    Raises:
        ImportError: TextAttack is not installed (``pip install -e '.[attack]'``).
    """
    if "textattack" in _IMPORTED:
        return _IMPORTED["textattack"]

    provide_nltk_stopwords(nltk_dir)
    real_download = nltk.download

    def no_download(info_or_id=None, *args, **kwargs):
        log.debug("nltk.download(%r) skipped: trustequiv provides what BERT-Attack needs offline", info_or_id)
        return False

    nltk.download = no_download
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        # optional dependency (the [attack] extra): imported when used
        import textattack
    finally:
        nltk.download = real_download
        # textattack sets TOKENIZERS_PARALLELISM=True at import; once set, tokenizers no longer turns its
        # thread pool off in forked children, and a forked attack worker deadlocks in its first encode.
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    _IMPORTED["textattack"] = textattack
    return textattack
