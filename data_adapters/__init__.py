"""Turn image / video corpora into plm-tune's canonical samples (see ``plm_tune.data.sample``).

One small module per corpus kind; each ``from_*`` function returns a ``datasets.Dataset`` (or
``IterableDataset`` when streaming) whose media stay paths or encoded bytes until the collator decodes them.
Every adapter takes ``on_error="raise" | "skip"``: raise stops at the first bad record with its name, the
problem and the fix; skip counts every skipped record by reason (``dataset.skip_report``).

Adapters never import training code: they produce plain dicts.
"""

from data_adapters._records import BadRecord, SkipReport
from data_adapters.dicom import PHI_TAGS, from_dicom
from data_adapters.hf import from_hf_dataset
from data_adapters.image_folder import from_image_folder
from data_adapters.llava import from_llava_json
from data_adapters.mix import mix
from data_adapters.plm_jsonl import from_plm_jsonl, to_plm_jsonl
from data_adapters.preference import from_preference_data
from data_adapters.split import SHUFFLE_BUFFER, held_out_split
from data_adapters.synthetic import synthetic_shapes, synthetic_videos
from data_adapters.video_folder import from_video_folder
from data_adapters.webdataset import expand_shards, from_webdataset, select_shards

__all__ = [
    "BadRecord",
    "PHI_TAGS",
    "SHUFFLE_BUFFER",
    "SkipReport",
    "expand_shards",
    "from_dicom",
    "from_hf_dataset",
    "from_image_folder",
    "from_llava_json",
    "from_plm_jsonl",
    "from_preference_data",
    "from_video_folder",
    "from_webdataset",
    "held_out_split",
    "mix",
    "select_shards",
    "synthetic_shapes",
    "synthetic_videos",
    "to_plm_jsonl",
]
