"""Layer 4, inference: answering with a model and scoring the answers.

``generation`` (``generate``: prompts encoded by the training collator), ``metrics`` (exact match, BLEU, ROUGE-L)
and ``evaluation`` (``evaluate``: answers, scores and eval loss, with and without the adapter). Imports: the
layers below; training uses this layer for its in-training checks.
"""
