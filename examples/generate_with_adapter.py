"""Answer about a new image with a trained adapter: load the base model, apply the adapter, generate.

The adapter folder is what training saved (``trainer.save_model``, a recipe's ``output_dir``, or
``examples/custom_dataset.py``'s): ``adapter_config.json`` names the base model, and
``plm_tune_training.json`` the tile budget it was trained with, which answering should reuse (PLM's default,
36 tiles, would show the model images cut up unlike anything it trained on).

On PLM-1B (a CUDA GPU and Hub access), after ``python examples/custom_dataset.py --csv ...``:

    python examples/generate_with_adapter.py --adapter outputs/custom-dataset --image new_scan.png

Offline, with the tiny PLM and the adapter ``examples/custom_dataset.py --model .cache/tiny-plm --max-steps 3``
saved (its random weights answer with noise). On 2 CPU cores it took 12 s, most of it imports:

    python examples/generate_with_adapter.py --model .cache/tiny-plm --adapter outputs/custom-dataset \\
        --image outputs/custom-dataset-records/case-00.png

It prints the settings it found and both answers, the adapter's and the base model's::

    base .cache/tiny-plm + adapter outputs/custom-dataset (lora, 3 steps), 4 tiles per image
    finetuned: <the adapter's answer>
    base:      <the base model's answer>

The command line does the same: ``plm-tune generate --adapter outputs/custom-dataset --image new_scan.png
--prompt "Describe the findings in this image."``.
"""

from __future__ import annotations

import argparse

from plm_tune import base_model_context, generate, load_for_inference
from plm_tune.modeling.run_folder import read_training_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="the adapter folder training saved")
    parser.add_argument("--model", help="base model (Hub id or folder); default: the one adapter_config.json names")
    parser.add_argument("--image", required=True, help="the new image (any format PIL opens; .dcm with the dicom extra)")
    parser.add_argument("--prompt", default="Describe the findings in this image.",
                        help="ask what the adapter was trained to answer: the training prompt works best")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    # Base + adapter in eval mode, on the GPU when there is one; the processor saved with the adapter.
    # With model=None the adapter folder alone is enough: its adapter_config.json names the base.
    model, processor = load_for_inference(args.model or args.adapter, args.adapter if args.model else None)
    trained = read_training_info(args.adapter)  # {} for a folder saved without it
    max_tiles = trained.get("max_tiles")         # None: the processor's default
    print(f"base {args.model or 'from adapter_config.json'} + adapter {args.adapter} "
          f"({trained.get('method', 'method not recorded')}, {trained.get('global_step', '?')} steps), "
          f"{max_tiles or 'default'} tiles per image")

    # A prompt is a canonical sample that ends on the user's turn.
    sample = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}],
              "images": [args.image]}
    options = {"max_new_tokens": args.max_new_tokens, "max_tiles": max_tiles, "progress": False}
    answer = generate(model, processor, [sample], **options)[0]
    with base_model_context(model):  # the same weights with the adapter switched off
        base_answer = generate(model, processor, [sample], **options)[0]
    print(f"finetuned: {answer}")
    print(f"base:      {base_answer}")


if __name__ == "__main__":
    main()
