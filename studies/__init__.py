"""The studies of docs/results.md: their tables and plots from a finished ``rlvr sweep``.

Run from the repository root: ``python -m studies {aapo,maxpo,async} SWEEP_DIR [--img-dir DIR] [--no-plot]``.

  cells     a sweep's runs grouped by variant and grid point (``rlvr.sweep.read_plan``, ``rlvr.compare.load_run``)
            and the per-run measures the studies use (windows, collapse test, budgets, first reach)
  reports   each study's table as data (``aapo_table``, ``maxpo_table``, ``async_table``), rendered as Markdown
            with its plot (``aapo_report``, ``maxpo_report``, ``async_report``)

Cells are ``mean ± h``: h is the half-width of the 95% Student-t interval over seeds (``rlvr.eval.Estimate``).
Not part of the installed package: the studies read a sweep's ``sweep.json`` and each run's config and
``metrics.jsonl`` through rlvr's public API.
"""
