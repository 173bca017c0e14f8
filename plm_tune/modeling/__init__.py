"""Layer 3, modeling: loading PLM and deciding what trains, in which dtypes, and what it will cost.

``model`` (``load_model``: LoRA / DoRA / QLoRA / full, frozen parts, parameter groups), ``precision`` (dtypes and
attention kernels per sub-model), ``run_folder`` (what a run folder holds and how it is read back),
``architecture`` / ``memory`` (released sizes, peak-memory estimates), ``devices`` (is the GPU usable) and
``testing`` / ``testing_real`` (the tiny and the released-size random PLMs). Imports: the layers below.
"""
