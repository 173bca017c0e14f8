"""plm-tune's recipes, installed with the package as ``plm_tune_recipes`` (from this folder): runnable training
scripts and their configs (``configs/``) and DeepSpeed launch configs (``accelerate/``).

Run one with ``plm-tune train CONFIG`` (``plm-tune recipes`` lists them; ``plm-tune recipes cp NAME DIR`` copies
one to edit) or, from a clone, ``accelerate launch recipes/NAME.py --config recipes/configs/CONFIG.yaml``.
Nothing in ``plm_tune`` or ``data_adapters`` imports a recipe; ``plm-tune train`` runs one as a script.
"""
