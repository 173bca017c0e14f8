"""Layer 6, after training: what a finished run becomes.

``outputs`` (``finish_run``: save, eval split, evaluation, report, push), ``report`` / ``report_summary`` (the
HTML report), ``merge`` (adapter into base), ``model_card`` and ``push`` (the Hub). Imports: the layers below.
"""
