"""Share a trained adapter on the Hugging Face Hub with its model card, or preview the upload with --dry-run.

``plm_tune.push_adapter`` checks the folder (safetensors weights, tokenizer and processor files), writes a
model card (Hub metadata, method, LoRA rank / alpha / targets, frozen parts, tiles, frames, steps, metrics,
a usage snippet) from ``adapter_config.json`` and ``plm_tune_training.json`` in place of peft's or TRL's, and
uploads an allowlist: weights (safetensors), configs, processor / tokenizer files, the card and
``plm_tune_training.json``; never checkpoints, pickles (``training_args.bin``), data, symlinks or the eval data and
report (they hold your images: publish those deliberately).

``--dry-run`` touches no network: it copies exactly the files an upload would send into a preview folder and
writes the card there, so you can read both before anything is public.

After ``examples/custom_dataset.py`` (any adapter folder works), with a write token in ``HF_TOKEN`` or from
``hf auth login``:

    python examples/push_adapter.py --adapter outputs/custom-dataset --repo-id you/plm-1b-findings --private

Offline (2 CPU cores: 6 s):

    python examples/push_adapter.py --adapter outputs/custom-dataset --repo-id you/plm-1b-findings --dry-run

It prints the files and the start of the card::

    Would upload 8 files to https://huggingface.co/you/plm-1b-findings (preview in outputs/custom-dataset-upload):
      README.md
      adapter_config.json
      ...
    ---
    base_model: ...

The command line: ``plm-tune push --adapter outputs/custom-dataset --repo-id you/plm-1b-findings --private``
(``--dry-run`` there prints the files and the card, and writes nothing).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from plm_tune import push_adapter
from plm_tune.after_training.push import push_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="the adapter folder training saved")
    parser.add_argument("--repo-id", required=True, help="user/name or org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--dry-run", action="store_true", help="write the upload folder, upload nothing")
    parser.add_argument("--preview-dir", help="where --dry-run writes it (default: ADAPTER-upload)")
    args = parser.parse_args()

    if not args.dry_run:
        # Creates the repo if needed, writes README.md into the adapter folder unless you wrote your own.
        url = push_adapter(args.adapter, args.repo_id, private=args.private)
        print(f"Pushed {args.adapter} to {url}")
        return

    preview = Path(args.preview_dir or args.adapter.rstrip("/") + "-upload")
    if preview.exists():
        shutil.rmtree(preview)
    plan = push_plan(args.adapter, args.repo_id)  # the files and the card the upload would send
    for name in plan.files:
        (preview / name).parent.mkdir(parents=True, exist_ok=True)
        if name != "README.md":
            shutil.copy2(plan.folder / name, preview / name)
    card = preview / "README.md"
    card.write_text(plan.card)
    files = sorted(p.relative_to(preview).as_posix() for p in preview.rglob("*") if p.is_file())
    print(f"Would upload {len(files)} files to https://huggingface.co/{args.repo_id} (preview in {preview}):")
    print("\n".join(f"  {name}" for name in files))
    print("\n".join(card.read_text().splitlines()[:12]))


if __name__ == "__main__":
    main()
