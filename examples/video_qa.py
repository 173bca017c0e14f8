"""Question answering over timed video clips: LoRA on the language model, the vision tower frozen.

One video often holds several clips. An annotations table names the file, the clip's start and end in seconds,
the question and the answer; ``data_adapters.from_video_folder`` turns each row into a canonical sample::

    file,start,end,question,answer
    clips/ball-03.mp4,0,4,Which way does the ball move?,left
    clips/ball-03.mp4,4,8,Which way does the ball move?,right

    {"id": "clips/ball-03.mp4[4-8]",
     "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way ...?"}]},
                  {"role": "assistant", "content": "right"}],
     "videos": [{"path": "/data/clips/ball-03.mp4", "start": 4.0, "end": 8.0}], "num_frames": 4}

Frames are chosen per dataset (``num_frames`` stamped into its samples), not per run: PLM samples candidates at
1 frame per second inside ``[start, end]`` and keeps ``num_frames`` of them, both ends included. A PLM-1B
frame is 256 tokens, so 4-second clips gain nothing from more than 4 frames, while 30-second clips may want 16.

Your clips on PLM-1B (a CUDA GPU and Hub access); the folder holds ``annotations.csv`` as above:

    python examples/video_qa.py --video-folder /data/clips --num-frames 8 --max-steps 300

Offline, on a tiny random PLM (``plm-tune tiny-model .cache/tiny-plm``) and 6 generated 8-second MPEG-4 videos
(12 clips) written with PyAV. On 2 CPU cores it took 25 s:

    python examples/video_qa.py --model .cache/tiny-plm --max-steps 3

It prints::

    12 clips from 6 videos, 4 frames each (10 train, 2 held out)
    Trainable parameters (lora): language 0.03M (LoRA), vision 0 (frozen), projector 0.01M (full); ...
    train loss 6.849 (step 1) -> 6.716 (step 3)
    vision tower unchanged: True
    held out  accuracy 0 (2 clips)
    Saved the LoRA adapter to outputs/video-qa
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
import torch
from trl import SFTConfig

from data_adapters import from_video_folder
from plm_tune import MediaArguments, build_trainer, evaluate, load_model, loss_change

QUESTION = "Which way does the ball move?"


def write_demo_videos(folder: Path, count: int = 6, size: int = 64, fps: int = 4) -> Path:
    """Stand-in for your clips: each 8 s video shows a ball moving one way for 4 s, then back; two rows each."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        first = "left" if i % 2 else "right"
        second = "right" if first == "left" else "left"
        name = f"ball-{i:02d}.mp4"
        with av.open(str(folder / name), "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for t in range(8 * fps):
                half = t / (4 * fps) if t < 4 * fps else 2 - t / (4 * fps)  # 0 -> 1 -> 0 across the video
                x = int(8 + (size - 16) * (half if first == "right" else 1 - half))
                rgb = np.full((size, size, 3), 30, np.uint8)
                rgb[size // 2 - 6:size // 2 + 6, max(x - 6, 0):x + 6] = (250, 200, 0)
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows += [{"file": name, "start": 0, "end": 4, "question": QUESTION, "answer": first},
                 {"file": name, "start": 4, "end": 8, "question": QUESTION, "answer": second}]
    with open(folder / "annotations.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "start", "end", "question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="facebook/Perception-LM-1B", help="Hub id or folder of a PLM")
    parser.add_argument("--video-folder", help="videos + annotations.csv (file, start, end, question, answer); "
                                               "default: generated demo clips in OUTPUT_DIR-videos")
    parser.add_argument("--num-frames", type=int, default=4, help="frames per clip for this dataset")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--output-dir", default="outputs/video-qa")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # shows load_model's trainable-parameter line
    logging.getLogger("httpx").setLevel(logging.WARNING)

    ################
    # Data: one sample per timed clip, frames per clip chosen for this dataset
    ################
    folder = Path(args.video_folder or write_demo_videos(Path(args.output_dir + "-videos")))
    clips = from_video_folder(folder, num_frames=args.num_frames)  # opens each file's header, once
    split = clips.train_test_split(test_size=max(2, len(clips) // 6), seed=0)
    train_set, eval_set = split["train"], split["test"]
    videos = len({sample["videos"][0]["path"] for sample in clips})
    print(f"{len(clips)} clips from {videos} videos, {args.num_frames} frames each "
          f"({len(train_set)} train, {len(eval_set)} held out)")

    ################
    # Model: the vision tower stays frozen (bit-identical); LoRA on the decoder, projector in full
    ################
    model, processor = load_model(args.model, method="lora", freeze=("vision",), lora_r=8, lora_alpha=16)
    tower = {name: p.detach().clone() for name, p in model.named_parameters() if "vision_tower" in name}

    ################
    # Training
    ################
    on_gpu = torch.cuda.is_available()
    training_args = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=2,
        learning_rate=2e-4 if on_gpu else 3e-3,
        max_length=256 * args.num_frames + 512,  # tokens: 256 per PLM-1B frame, plus the text
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = build_trainer(model, processor, train_set, args=training_args,
                            media=MediaArguments(num_frames=args.num_frames))
    trainer.train()
    print(loss_change(trainer.state.log_history))
    unchanged = all(torch.equal(tower[name], p) for name, p in model.named_parameters() if name in tower)
    print(f"vision tower unchanged: {unchanged}")

    ################
    # Evaluate and save
    ################
    result = evaluate(model, processor, eval_set, collator=trainer.plm_collator, max_new_tokens=4, kind="choice",
                      compute_loss=False, progress=False)
    print(f"held out  accuracy {result.metrics['accuracy']:.3g} ({len(eval_set)} clips)")
    trainer.save_model(args.output_dir)
    print(f"Saved the LoRA adapter to {args.output_dir}")


if __name__ == "__main__":
    main()
