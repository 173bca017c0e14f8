"""Turn image / video corpora into plm-tune's canonical samples (see ``plm_tune.sample``).

One small module per corpus kind. Adapters never import training code: they produce plain dicts.
"""

__all__: list[str] = []
