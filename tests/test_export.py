"""merge_adapter, write_model_card and push_adapter on the tiny PLM: real peft adapters, real merges and
reloads; only the Hub's network boundary (HfApi.create_repo / upload_folder) is replaced by recorders."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import traceback

import pytest
import torch
import yaml
from conftest import make_image
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.utils import filter_repo_objects
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from plm_tune import PLMCollator, load_model
from plm_tune.after_training.merge import merge_adapter
from plm_tune.after_training.model_card import write_model_card
from plm_tune.after_training.push import files_to_upload, push_adapter
from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.modeling.run_folder import TRAINING_INFO_FILE, TRAINING_INFO_KEYS, write_training_info

TOKEN = "hf_SECRET123"
LORA_R, LORA_ALPHA = 8, 24  # not load_model's defaults, so the card must read them from adapter_config.json
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
PROCESSOR_FILES = {"chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
# (method, lora_targets, freeze): DoRA also puts LoRA on the vision tower's fused qkv, fc1, fc2.
ADAPTERS = [
    ("lora", "language", ("vision",)),
    ("dora", "language+vision", ()),
    ("qlora", "language", ("vision",)),
]


def _batch(processor):
    samples = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": f"A red circle and {n} squares."},
            ],
            "images": [make_image(90, 50, seed=n)],
        }
        for n in range(2)
    ]
    return PLMCollator(processor, max_tiles=2)(samples)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def _base(tiny_plm_path):
    return AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def adapters(tiny_plm_path, processor, tmp_path_factory):
    """adapters(method) -> (model in memory, saved adapter folder), built once per method.

    LoRA B starts at zero (the adapter would be a no-op), so B and the projector trained in full get random
    values: a merge that dropped either would change the logits.
    """
    built = {}

    def make(method: str):
        if method not in built:
            _, lora_targets, freeze = next(case for case in ADAPTERS if case[0] == method)
            torch.manual_seed(0)
            model, _ = load_model(
                tiny_plm_path, method=method, freeze=freeze, lora_targets=lora_targets,
                lora_r=LORA_R, lora_alpha=LORA_ALPHA,
            )
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name or "modules_to_save" in name:
                        param.add_(torch.randn_like(param) * 0.05)
            folder = tmp_path_factory.mktemp(f"adapter-{method}")
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            built[method] = (model.eval(), folder)
        return built[method]

    return make


@pytest.fixture
def lora_copy(adapters, tmp_path):
    """A private copy of the LoRA adapter folder (cards and pushes write into it)."""
    return shutil.copytree(adapters("lora")[1], tmp_path / "adapter")


# ---------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("method", [case[0] for case in ADAPTERS])
def test_merged_folder_loads_alone_and_gives_the_adapters_logits(
    adapters, tiny_plm_path, processor, tmp_path, method, caplog
):
    model, adapter_dir = adapters(method)
    if method == "qlora":
        write_training_info(adapter_dir, {"method": "qlora"})
    batch = _batch(processor)
    if method == "qlora":
        # The merge goes into the float32 base, not the 4-bit one that trained: compare with that adapter.
        expected = _logits(PeftModel.from_pretrained(_base(tiny_plm_path), adapter_dir), batch)
    else:
        expected = _logits(model, batch)
    assert (expected - _logits(_base(tiny_plm_path), batch)).abs().max() > 1e-2  # the adapter matters

    with caplog.at_level(logging.WARNING, logger="plm_tune.after_training.merge"):
        out = merge_adapter(adapter_dir, tmp_path / "merged", dtype=torch.float32)

    assert out == tmp_path / "merged"
    files = {p.name for p in out.iterdir()}
    # The training facts travel along (generate's tile / frame defaults), when the adapter had them.
    recorded = {TRAINING_INFO_FILE} if method == "qlora" else set()
    assert files == {"config.json", "generation_config.json", "model.safetensors", *PROCESSOR_FILES, *recorded}
    assert not any(name.startswith("adapter_") or name.endswith((".bin", ".pt")) for name in files)
    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    # Tolerance: float32, logits of order 1; the merge re-associates W x + B A x into (W + B A) x.
    torch.testing.assert_close(_logits(merged, batch), expected, rtol=0, atol=1e-4)

    reloaded = AutoProcessor.from_pretrained(out)
    assert (out / "chat_template.jinja").read_text() == (tiny_plm_path / "chat_template.jinja").read_text()
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert bool([m for m in warned if "QLoRA" in m and "not bit-identical" in m]) == (method == "qlora")


def test_merge_takes_base_model_when_the_recorded_base_is_gone_and_its_processor_when_none_is_saved(
    lora_copy, tiny_plm_path, tmp_path
):
    config = json.loads((lora_copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nonexistent/Perception-LM-1B"
    (lora_copy / "adapter_config.json").write_text(json.dumps(config))
    expected = r"/nonexistent/Perception-LM-1B.*adapter_config\.json.*`base_model`"
    with pytest.raises(FileNotFoundError, match=expected):
        merge_adapter(lora_copy, tmp_path / "merged")
    for name in PROCESSOR_FILES:  # and, without its own processor, the adapter gets the base's
        (lora_copy / name).unlink()
    out = merge_adapter(lora_copy, tmp_path / "merged", base_model=str(tiny_plm_path))
    assert {p.name for p in out.iterdir()} >= PROCESSOR_FILES
    assert (out / "chat_template.jinja").read_text() == (tiny_plm_path / "chat_template.jinja").read_text()


def test_merge_errors_name_the_folder_and_the_fix(lora_copy, tiny_plm_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: pass `adapter_dir`"):
        merge_adapter(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no adapter_config.json.*full model.*needs no merge"):
        merge_adapter(tiny_plm_path, tmp_path / "out")
    with pytest.raises(ValueError, match="holds an adapter.*Pass another `output_dir`"):
        merge_adapter(lora_copy, lora_copy)
    (lora_copy / "adapter_model.safetensors").rename(lora_copy / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle"):
        merge_adapter(lora_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- model card


def _front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def test_card_has_hub_metadata_and_the_training_facts(lora_copy):
    info = {
        "method": "lora", "freeze": ["vision"], "max_tiles": 4, "num_frames": 8,
        "datasets": ["unsloth/Radiology_mini", "/data/scans"], "data_mix": {"unsloth/Radiology_mini": 0.7,
                                                                           "/data/scans": 0.3},
        "max_steps": 200, "global_step": 200, "metrics": {"train_loss": 0.41},
    }
    write_training_info(lora_copy, info)
    path = write_model_card(
        lora_copy, repo_id="me/plm-lora", base_model="facebook/Perception-LM-1B",
        metrics={"eval_loss": 0.5213, "eval_accuracy": 0.8}, tags=["radiology"],
    )
    text = path.read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == "facebook/Perception-LM-1B"
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["datasets"] == ["unsloth/Radiology_mini"]  # a local path is no Hub metadata
    assert meta["tags"] == ["plm-tune", "perception-lm", "lora", "radiology"]

    config = json.loads((lora_copy / "adapter_config.json").read_text())
    assert f"- **LoRA rank (r):** {LORA_R}\n" in text
    assert f"- **LoRA alpha:** {LORA_ALPHA}\n" in text
    assert f"- **Target modules:** `{config['target_modules']}`\n" in text
    assert "- **Trained in full (modules_to_save):** `model.multi_modal_projector`\n" in text
    assert "language model: LoRA, vision tower: frozen, projector: trained in full" in text
    assert "- **Frozen parts:** vision\n" in text
    assert "- **Image tiles (max_tiles):** 4\n" in text and "- **Video frames (num_frames):** 8\n" in text
    assert "- **Training steps:** 200 (planned: 200)\n" in text
    assert "/data/scans: 0.3" in text
    assert "| eval_loss | 0.5213 |\n| eval_accuracy | 0.8 |" in text and "train_loss" not in text
    assert 'PeftModel.from_pretrained(base, "me/plm-lora")' in text
    assert "add_generation_prompt=True, tokenize=True, return_dict=True" in text
    assert "not recorded" not in text


def test_card_says_not_recorded_and_keeps_a_local_base_out_of_the_metadata(lora_copy, tiny_plm_path):
    text = write_model_card(lora_copy, repo_id="me/plm-lora").read_text()
    meta = _front_matter(text)
    assert "base_model" not in meta and "datasets" not in meta
    assert f"`{tiny_plm_path}` (a local folder)" in text
    assert "LoRA (read from adapter_config.json; a 4-bit QLoRA base is not recorded there)" in text
    fields = ("Image tiles (max_tiles)", "Video frames (num_frames)", "Training steps", "Datasets", "Mix")
    for field in fields:
        assert f"- **{field}:** not recorded\n" in text
    assert "Final metrics: not recorded." in text


def test_qlora_card_says_how_to_load_the_4bit_base(adapters, tmp_path):
    folder = shutil.copytree(adapters("qlora")[1], tmp_path / "qlora")
    text = write_model_card(folder, repo_id="me/plm-qlora", training={"method": "qlora"}).read_text()
    assert _front_matter(text)["tags"] == ["plm-tune", "perception-lm", "qlora", "lora"]
    assert "QLoRA (LoRA on a language model quantised to 4-bit NF4)" in text
    assert 'bnb_4bit_quant_type="nf4"' in text and "not bit-identical" in text


def test_the_cards_usage_snippet_runs(lora_copy, tmp_path):
    text = write_model_card(lora_copy, repo_id="me/plm-lora").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    make_image(90, 50).save(tmp_path / "image.png")
    snippet = (
        snippet.replace('"me/plm-lora"', repr(str(lora_copy)))
        .replace('"image.png"', repr(str(tmp_path / "image.png")))
        .replace(f"max_new_tokens={MAX_NEW_TOKENS}", "max_new_tokens=3")  # the tiny model's words mean nothing
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "model-card-snippet", "exec"), {})
    assert out.getvalue().strip()


def test_training_info_takes_only_known_keys(lora_copy):
    assert set(TRAINING_INFO_KEYS) == {
        "method", "base_model", "lora_r", "lora_alpha", "target_modules", "freeze", "max_tiles", "num_frames", "datasets",
        "data_mix", "max_steps", "global_step", "metrics", "train_samples", "eval_samples", "train_seconds",
        "eval_max_new_tokens", "log_history", "objective", "beta", "loss_type",
    }
    with pytest.raises(ValueError, match=r"unknown keys \['max_tile'\]; known keys: method"):
        write_training_info(lora_copy, {"max_tile": 4})
    with pytest.raises(ValueError, match="method must be one of"):
        write_model_card(lora_copy, repo_id="me/x", training={"method": "adapter"})
    path = write_training_info(lora_copy, {"freeze": ("vision",), "metrics": {"eval_loss": 1.5}})
    assert json.loads(path.read_text()) == {"freeze": ["vision"], "metrics": {"eval_loss": 1.5}}


# ---------------------------------------------------------------------------------------------- push


class _Hub:
    """Stands in for the Hub: records HfApi calls; upload_folder copies what it would send into `remote`."""

    def __init__(self, remote, fail: str | None = None) -> None:
        self.remote, self.fail, self.calls = remote, fail, []

    def install(self, monkeypatch) -> None:
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", api.token, repo_id, kwargs))
            if hub.fail == "create_repo":
                raise OSError(f"401 Client Error: Unauthorized; Authorization: Bearer {api.token}")

        def upload_folder(api, **kwargs):
            hub.calls.append(("upload_folder", api.token, kwargs["repo_id"], kwargs))
            if hub.fail == "upload_folder":
                raise OSError(f"403 Forbidden: token {api.token} cannot write to {kwargs['repo_id']}")
            folder = kwargs["folder_path"]
            paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            for path in filter_repo_objects(paths, allow_patterns=kwargs["allow_patterns"]):
                (hub.remote / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / path, hub.remote / path)
            url = f"https://huggingface.co/{kwargs['repo_id']}/commit/{'a' * 40}"
            message = kwargs["commit_message"]
            return CommitInfo(url, commit_message=message, commit_description="", oid="a" * 40)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def _add_training_leftovers(folder) -> None:
    """What trainer.save_model and the Trainer leave next to the adapter."""
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"pickle")
    shutil.copy(folder / "adapter_model.safetensors", folder / "checkpoint-2")
    (folder / "runs" / "Nov27").mkdir(parents=True)
    (folder / "runs" / "Nov27" / "events.out.tfevents.1").write_bytes(b"tb")


def test_push_uploads_a_loadable_adapter_with_a_card_and_nothing_else(
    adapters, lora_copy, tiny_plm_path, processor, tmp_path, monkeypatch, capfd, caplog
):
    caplog.set_level(logging.DEBUG)
    hub = _Hub(tmp_path / "remote")
    hub.install(monkeypatch)
    _add_training_leftovers(lora_copy)
    assert "# Model Card for Model ID" in (lora_copy / "README.md").read_text()  # peft's empty template
    assert files_to_upload(lora_copy) == sorted({*ADAPTER_FILES, *PROCESSOR_FILES, "README.md"})

    url = push_adapter(lora_copy, "me/plm-lora", private=True, token=TOKEN, metrics={"eval_loss": 0.5})

    assert url == f"https://huggingface.co/me/plm-lora/commit/{'a' * 40}"
    (create, token, repo_id, kwargs), (upload, upload_token, upload_repo, upload_kwargs) = hub.calls
    assert (create, token, repo_id, kwargs) == (
        "create_repo", TOKEN, "me/plm-lora", {"private": True, "exist_ok": True, "repo_type": "model"}
    )
    assert (upload, upload_token, upload_repo) == ("upload_folder", TOKEN, "me/plm-lora")
    assert upload_kwargs["folder_path"] == lora_copy and upload_kwargs["repo_type"] == "model"
    assert sorted(upload_kwargs["allow_patterns"]) == files_to_upload(lora_copy)  # no glob characters here
    remote = {p.relative_to(hub.remote).as_posix() for p in hub.remote.rglob("*") if p.is_file()}
    assert remote == {*ADAPTER_FILES, *PROCESSOR_FILES, "README.md"} == set(files_to_upload(lora_copy))
    card = (hub.remote / "README.md").read_text()
    assert "plm-tune" in _front_matter(card)["tags"] and "| eval_loss | 0.5 |" in card

    model, _ = adapters("lora")
    batch = _batch(AutoProcessor.from_pretrained(hub.remote))
    pushed = PeftModel.from_pretrained(_base(tiny_plm_path), hub.remote)
    torch.testing.assert_close(_logits(pushed, batch), _logits(model, batch), rtol=0, atol=1e-5)

    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert "me/plm-lora" in caplog.text  # the log was captured, and says where it went


@pytest.mark.parametrize("fail", ["create_repo", "upload_folder"])
def test_a_failed_push_never_shows_the_token(lora_copy, tmp_path, monkeypatch, capfd, caplog, fail):
    caplog.set_level(logging.DEBUG)
    _Hub(tmp_path / "remote", fail=fail).install(monkeypatch)
    with pytest.raises(RuntimeError) as error:
        push_adapter(lora_copy, "me/plm-lora", token=TOKEN)
    text = "".join(traceback.format_exception(error.type, error.value, error.tb))
    assert "Pushing" in text and "me/plm-lora" in text and ("401" in text or "403" in text)
    assert TOKEN not in text and error.value.__cause__ is None and error.value.__suppress_context__
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text


def test_push_refuses_incomplete_folders_before_any_network_call(lora_copy, tmp_path, monkeypatch):
    hub = _Hub(tmp_path / "remote")
    hub.install(monkeypatch)
    with pytest.raises(ValueError, match="`repo_id` 'not a repo' is not a Hub repo id"):
        push_adapter(lora_copy, "not a repo", token=TOKEN)

    (lora_copy / "README.md").write_text("# My own card\n")
    with pytest.raises(ValueError, match=r"card of your own, so \['metrics'\] would be ignored"):
        push_adapter(lora_copy, "me/plm-lora", metrics={"eval_loss": 0.5})

    (lora_copy / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks processor_config.json or .*processor.save_pretrained"):
        push_adapter(lora_copy, "me/plm-lora")

    (lora_copy / "adapter_model.safetensors").rename(lora_copy / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle"):
        push_adapter(lora_copy, "me/plm-lora")
    assert hub.calls == []
    assert (lora_copy / "README.md").read_text() == "# My own card\n"  # a card of your own is kept


def test_push_keeps_a_card_of_your_own(lora_copy, tmp_path, monkeypatch):
    hub = _Hub(tmp_path / "remote")
    hub.install(monkeypatch)
    (lora_copy / "README.md").write_text("# My own card\n")
    push_adapter(lora_copy, "me/plm-lora")
    assert (hub.remote / "README.md").read_text() == "# My own card\n"
    assert hub.calls[0][3]["private"] is False


def test_finish_run_pushes_the_trained_adapter_with_its_card_and_not_the_eval_data(tiny_plm_path, tmp_path, monkeypatch):
    """The recipes' push_to_hub path: train 2 steps, finish_run saves, evaluates, then pushes through HfApi."""
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune import build_trainer, load_model
    from plm_tune.after_training.outputs import finish_run

    hub = _Hub(tmp_path / "remote")
    hub.install(monkeypatch)
    model, processor = load_model(tiny_plm_path, method="lora")
    samples = synthetic_shapes(12, seed=0, max_tiles=1)
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, report_to="none",
                     bf16=False, max_length=None, save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = build_trainer(model, processor, samples.select(range(8)), samples.select(range(8, 12)), args)
    trainer.train()
    outputs = finish_run(trainer, eval_set=samples.select(range(8, 12)), training_info={"method": "lora"},
                       max_new_tokens=4, push_to_hub=True, hub_model_id="me/plm-run")

    assert outputs.hub_url.startswith("https://huggingface.co/me/plm-run/commit/")
    assert (tmp_path / "run/eval_data").is_dir() and outputs.report.is_file()
    remote = {p.relative_to(hub.remote).as_posix() for p in hub.remote.rglob("*") if p.is_file()}
    assert {"adapter_model.safetensors", "plm_tune_training.json", "README.md"} <= remote
    assert not [p for p in remote if p.startswith(("eval_data/", "eval/")) or p.endswith(".bin")]
    card = (hub.remote / "README.md").read_text()
    assert "**Training steps:** 2" in card and "eval_rouge_l" in card  # steps and held-out scores recorded
