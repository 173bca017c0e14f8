"""Train on a weighted mix of an image set and a video set, each with its own tile / frame budget, and count
what each costs in tokens before training.

A PLM-1B image is a thumbnail plus up to ``max_tiles`` tiles of 256 tokens; a video is 256 tokens per frame.
So the share of *samples* a member gets (its weight) is not its share of *compute*: a 3:1 image:video mix at
4 tiles and 8 frames spends more tokens on the videos than the weights suggest. ``data_adapters.mix`` draws from
each member in proportion to its weight and stamps each member's own ``max_tiles`` / ``num_frames`` into its
samples; ``plm_tune.encoding.costs.estimate_cost`` says, from media headers only (no pixels decoded), exactly what the
training collator will make of a sample; its ``.cost`` is ``(tokens, tiles + frames)``, tabulated here per
member. ``plm-tune plan`` does the same for a whole dataset from the command line.

On PLM-1B (a CUDA GPU and Hub access), the generated sets stand in for yours (any adapters' outputs mix):

    python examples/mixed_image_video.py --max-steps 300

Offline, on a tiny random PLM (``plm-tune tiny-model .cache/tiny-plm``; 4 tokens per tile or frame instead of
256). On 2 CPU cores it took 20 s:

    python examples/mixed_image_video.py --model .cache/tiny-plm --max-steps 3

It prints the mix, a token table per member, and the training summary::

    mix 3:1 of images (max_tiles 4) and videos (num_frames 8): 48 samples drawn
    member   samples  share  tokens/sample (max)  tiles+frames/sample  share of tokens
    images        37    77%              92 (92)                  5.0              73%
    videos        11    23%            116 (117)                  8.0              27%
    longest sample: 117 tokens (max_length 4096)
    train loss 6.689 (step 1) -> 6.581 (step 3)
    Saved the LoRA adapter to outputs/mixed-image-video

(On PLM-1B the same mix is about 1.3k tokens per image and 2k per video: the videos' share of tokens rises.)
"""

from __future__ import annotations

import argparse

import torch
from trl import SFTConfig

from data_adapters import mix, synthetic_shapes, synthetic_videos
from plm_tune import PLMCollator, build_trainer, load_model, loss_change
from plm_tune.encoding.costs import estimate_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="facebook/Perception-LM-1B", help="Hub id or folder of a PLM")
    parser.add_argument("--max-tiles", type=int, default=4, help="tile budget of the image set")
    parser.add_argument("--num-frames", type=int, default=8, help="frame budget of the video set")
    parser.add_argument("--samples", type=int, default=48, help="samples drawn from the mix")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--output-dir", default="outputs/mixed-image-video")
    args = parser.parse_args()

    ################
    # Data: two sets, a 3:1 mix, each member with its own media budget
    ################
    images = synthetic_shapes(3 * args.samples, seed=0, image_size=112)          # "What colour is the shape?"
    videos = synthetic_videos(args.samples, seed=1, num_frames=args.num_frames)  # "Which way does it move?"
    mixed = mix([(images, 3.0, {"max_tiles": args.max_tiles}), (videos, 1.0, {"num_frames": args.num_frames})],
                seed=0)
    # The mix streams (no length); a finite list is enough here and lets us count before training.
    samples = list(mixed.take(args.samples))
    print(f"mix 3:1 of images (max_tiles {args.max_tiles}) and videos (num_frames {args.num_frames}): "
          f"{len(samples)} samples drawn")

    ################
    # Model and the training collator: the costs below are computed by the collator that will train
    ################
    model, processor = load_model(args.model, method="lora", freeze=("vision",), lora_r=8, lora_alpha=16)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    max_length = 4096
    collator = PLMCollator(processor, max_length=max_length, pixel_dtype=torch.bfloat16 if bf16 else torch.float32)

    ################
    # Token accounting: (tokens, tiles + frames) per sample, from headers, summed per member
    ################
    costs = {"images": [], "videos": []}
    for sample in samples:
        costs["videos" if sample["videos"] else "images"].append(estimate_cost(sample, collator).cost)
    all_tokens = sum(tokens for member in costs.values() for tokens, _ in member)
    print(f"{'member':<8} {'samples':>7} {'share':>6} {'tokens/sample (max)':>20} {'tiles+frames/sample':>20} "
          f"{'share of tokens':>16}")
    for name, member in costs.items():
        tokens = [t for t, _ in member]
        vision = [v for _, v in member]
        n = max(len(member), 1)
        print(f"{name:<8} {len(member):>7} {len(member) / len(samples):>6.0%} "
              f"{f'{sum(tokens) / n:.0f} ({max(tokens, default=0)})':>20} {sum(vision) / n:>20.1f} "
              f"{sum(tokens) / all_tokens:>16.0%}")
    longest = max(tokens for member in costs.values() for tokens, _ in member)
    print(f"longest sample: {longest} tokens (max_length {max_length})")

    ################
    # Training
    ################
    training_args = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=2,
        learning_rate=2e-4 if on_gpu else 3e-3,
        max_length=max_length,
        bf16=bf16,
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = build_trainer(model, processor, samples, args=training_args, collator=collator)
    trainer.train()
    print(loss_change(trainer.state.log_history))
    trainer.save_model(args.output_dir)
    print(f"Saved the LoRA adapter to {args.output_dir}")


if __name__ == "__main__":
    main()
