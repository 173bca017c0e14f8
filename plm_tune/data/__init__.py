"""Layer 1, data: what a sample is and how its media are read, before any model is involved.

``sample`` (the canonical format, ``normalize_messages``), ``media`` (headers and decoding of images and videos),
``dicom`` / ``dicom_render`` (DICOM files to pixels), ``frame_selection`` / ``frame_decoding`` (which video frames
PLM sees, and decoding them). ``data_adapters`` build on this layer only. Imports: the foundation modules
(``plm_tune.errors``, ``verbosity``, ``arguments``, ``methods``) and nothing above.
"""
