"""Model sources: where a judged model comes from (``model.source``; see trustequiv/models/source.py)."""
