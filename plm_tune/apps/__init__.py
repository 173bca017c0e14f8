"""Layer 7, applications: what a user runs.

``cli`` / ``cli_run`` (the ``plm-tune`` command) and ``finetune`` (what every recipe does: plan, or load,
train and save). The command line may import ``data_adapters``; nothing in the library imports this layer.
"""
