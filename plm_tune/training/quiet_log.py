"""A quiet training log: one short line per logging step (loss, learning rate, epoch) instead of the Trainer's
18-key dict; the full dicts come back with ``PLM_TUNE_VERBOSE=1`` (the recipes' ``--verbose`` sets it).

Everything stays logged to TensorBoard / the Trainer's ``log_history`` as before: only what is printed changes::

    step 10/150: loss 6.41, learning_rate 0.005, epoch 0.45
"""

from __future__ import annotations

from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from plm_tune.verbosity import is_verbose

__all__ = ["QuietPrinterCallback", "QuietProgressCallback", "quiet_training_log", "short_log_line"]

# What a reader follows during training; the rest (throughput, collator counters, entropy) is in TensorBoard.
# DPO's reward accuracy and margin (TRL's DPOTrainer logs) say whether preference tuning works; SFT has neither.
SHOWN = ("loss", "eval_loss", "train_loss", "rewards/accuracies", "rewards/margins", "learning_rate", "epoch",
         "train_runtime")


def short_log_line(logs: dict[str, Any], step: int, max_steps: int) -> str | None:
    """``step 10/150: loss 6.41, learning_rate 0.005, epoch 0.45``; None for a log with none of ``SHOWN``."""
    shown = [f"{key} {logs[key]:.4g}" if isinstance(logs[key], float) else f"{key} {logs[key]}"
             for key in SHOWN if key in logs]
    if not shown:
        return None
    return f"step {step}/{max_steps}: " + ", ".join(shown)


class QuietProgressCallback(ProgressCallback):
    """transformers' progress bar, writing ``short_log_line`` under it instead of the whole log dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            line = short_log_line(logs, state.global_step, state.max_steps)
            if line:
                self.training_bar.write(line)


class QuietPrinterCallback(PrinterCallback):
    """transformers' printer (used with ``disable_tqdm``), printing ``short_log_line``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            line = short_log_line(logs, state.global_step, state.max_steps)
            if line:
                print(line)


def quiet_training_log(trainer: Any) -> None:
    """Swap the trainer's log printer for the quiet one, unless ``PLM_TUNE_VERBOSE`` is set."""
    if is_verbose():
        return
    swaps: dict[type, TrainerCallback] = {ProgressCallback: QuietProgressCallback(),
                                          PrinterCallback: QuietPrinterCallback()}
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) in swaps:
            callbacks[i] = swaps[type(callback)]
