"""What a run leaves and shows: results.json, predictions and report.md (``run_report``), report.html
(``html``), shared tables (``tables``), figures (``figures``, ``trust_curves``), each model's outputs kept in
its run dir (``saved_outputs``) and a sweep's results over all its jobs (``sweep``, ``sweep_html``).

May import: the core modules, ``trustequiv.train`` (metric names) and ``trustequiv.verdict``; never
``trustequiv.run``.
"""
