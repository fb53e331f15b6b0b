"""BERT-Attack's word swap (TextAttack ``WordSwapMaskedLM(method="bert-attack")``) without its blow-up on
words of many sub-words.

For a word the masked LM splits into n sub-words, TextAttack 0.3.11 walks every combination of the top
``max_candidates`` ids at each position (``itertools.product``: 8^n, 16.8 million for n = 8), computes a
cross-entropy for each, then returns the FIRST ``max_candidates`` combinations that form one word, in product
order: the line meant to rank them by perplexity (``sorted(...)``) throws its result away. One long token in
an IMDB review (a URL, "soooooo...") made a single attack step run for many minutes (py-spy: 99% of the time
in that loop, 64% in ``cross_entropy``).

:class:`LazyBertAttackSwap` walks the same product in the same order and stops at the ``max_candidates``-th
one-word combination: the same substitutes as TextAttack's, so the same attack (paper B ran TextAttack),
at a cost of about ``max_candidates`` combinations per word. Tested against TextAttack's method.
"""

from __future__ import annotations

import itertools
from typing import Any


def lazy_bert_attack_swap_class() -> type:
    """The :class:`LazyBertAttackSwap` class (TextAttack is imported on first use; call
    ``adversarial.env.import_textattack`` first)."""
    # optional dependency (the [attack] extra): imported when used
    from textattack.shared import utils
    from textattack.transformations import WordSwapMaskedLM

    class LazyBertAttackSwap(WordSwapMaskedLM):
        """``WordSwapMaskedLM`` whose multi-sub-word branch stops at ``max_candidates`` results."""

        def _bert_attack_replacement_words(
            self, current_text: Any, index: int, id_preds: Any, masked_lm_logits: Any
        ) -> list[str]:
            masked_text = current_text.replace_word_at_index(index, self._lm_tokenizer.mask_token)
            current_ids = self._encode_text(masked_text.text)["input_ids"].tolist()[0]
            word_tokens = self._lm_tokenizer.encode(current_text.words[index], add_special_tokens=False)
            try:  # the mask can fall past max_length
                masked_index = current_ids.index(self._lm_tokenizer.mask_token_id)
            except ValueError:
                return []
            positions = list(range(masked_index, min(masked_index + len(word_tokens), self.max_length)))
            if not positions:
                return []
            if len(positions) == 1:  # TextAttack's single-sub-word branch, as it is
                model_type = self._language_model.config.model_type
                return [
                    token
                    for token in self._lm_tokenizer.convert_ids_to_tokens(id_preds[positions[0]].tolist())
                    if utils.is_one_word(token) and not utils.check_if_subword(token, model_type, index == 0)
                ]
            out: list[str] = []
            for combo in itertools.product(*(id_preds[i].tolist() for i in positions)):
                word = "".join(self._lm_tokenizer.convert_ids_to_tokens(list(combo))).replace("##", "")
                if utils.is_one_word(word):
                    out.append(word)
                    if len(out) == self.max_candidates:
                        break
            return out

    return LazyBertAttackSwap
