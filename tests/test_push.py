"""`plm-tune push` as a careless or hostile setup meets it: secrets in server errors, junk and symlinks in the
folder, someone else's card. Real adapter folders from the tiny PLM; only the Hub's network boundary
(HfApi.create_repo / upload_folder) is replaced, in process or in the CLI's own process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from plm_tune.after_training.push import (
    PushError,
    files_to_upload,
    push_adapter,
    push_folder,
    push_plan,
    redact,
)

# Tokens of several shapes: only the first looks like a Hub token, so a pattern alone cannot catch the others.
TOKENS = {"argument": "hf_ArgumentToken123", "env": "my-secret.token/with+chars=", "login": "sk_live_stored42"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapter_dir(tiny_plm_path, processor, tmp_path_factory):
    """A LoRA adapter folder as trainer.save_model leaves it (adapter, processor, peft's placeholder card)."""
    from plm_tune import load_model

    model, _ = load_model(tiny_plm_path, method="lora", seed=0)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def adapter(adapter_dir, tmp_path):
    return Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))


def _seed_junk(folder: Path) -> list[str]:
    """Files and links a push must never carry; returns the names a listing must not show."""
    (folder / ".env").write_text("HF_TOKEN=hf_DoNotUploadMe123\n")
    (folder / "x.npy").write_bytes(b"\x93NUMPY")
    (folder / "a.joblib").write_bytes(b"pickle")
    (folder / "a.dcm").write_bytes(b"DICM")
    (folder / "train.csv").write_text("file_name,caption\n")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "sub" / "checkpoint-3").mkdir(parents=True)
    shutil.copy(folder / "adapter_model.safetensors", folder / "sub" / "checkpoint-3")
    (folder / "checkpoint-2").mkdir()
    shutil.copy(folder / "adapter_config.json", folder / "checkpoint-2")
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "etc").symlink_to("/etc", target_is_directory=True)
    return [".env", "x.npy", "a.joblib", "a.dcm", "train.csv", "training_args.bin", "checkpoint-", "passwd", "etc/"]


def _cli(*args: str, env: dict | None = None, hub: str = "") -> subprocess.CompletedProcess:
    """Run plm-tune in a fresh process; ``hub`` is Python run first (to replace the Hub's network calls)."""
    code = f"import sys\n{hub}\nfrom plm_tune.apps.cli import main\nsys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("PLM_TUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment,
                          cwd=ROOT)


# A Hub that quotes the request back, token and all, in a multi-line error (as a misbehaving proxy does).
QUOTING_HUB = textwrap.dedent("""
    from urllib.parse import quote
    import huggingface_hub
    def create_repo(self, repo_id, **kwargs):
        token = self.token or huggingface_hub.get_token()
        raise OSError(f"401 Unauthorized for {repo_id}\\nAuthorization: Bearer {token}\\n"
                      f"url: https://huggingface.co/api/repos/create?token={quote(token, safe='')}")
    huggingface_hub.HfApi.create_repo = create_repo
""")


@pytest.mark.parametrize("source", ["env", "login"])
def test_a_server_error_quoting_the_token_in_use_never_prints_it(adapter, tmp_path, source):
    env = {"HF_TOKEN_PATH": str(tmp_path / "token"), "HF_HOME": str(tmp_path / "hf-home")}
    if source == "env":
        env["HF_TOKEN"] = TOKENS["env"]
    else:  # `hf auth login` stored it
        (tmp_path / "token").write_text(TOKENS["login"])
    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", env=env, hub=QUOTING_HUB)

    token = TOKENS[source]
    assert result.returncode == 2  # exits.py: a PushError is USAGE
    assert token not in result.stdout + result.stderr and os.path.basename(token) not in result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("plm-tune push: error: Pushing") and "me/plm-lora" in lines[0] and "401" in lines[0]
    assert "Bearer ***" in lines[0]  # the server's words are kept, the secret is not


def test_a_push_failure_keeps_its_traceback_with_plm_tune_debug(adapter, tmp_path):
    env = {"HF_TOKEN": TOKENS["env"], "HF_TOKEN_PATH": str(tmp_path / "token")}
    code = f"import os; os.environ['PLM_TUNE_DEBUG'] = '1'\n{QUOTING_HUB}"
    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", env=env, hub=code)
    assert result.returncode == 1 and "Traceback" in result.stderr and "PushError" in result.stderr
    assert TOKENS["env"] not in result.stderr


def test_the_token_argument_is_redacted_from_the_error(adapter, monkeypatch):
    def create_repo(api, repo_id, **kwargs):
        raise ConnectionError(f"proxy refused: token={api.token}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    with pytest.raises(PushError) as error:
        push_adapter(adapter, "me/plm-lora", token=TOKENS["argument"])
    assert TOKENS["argument"] not in str(error.value) and "token=***" in str(error.value)
    assert "\n" not in str(error.value) and error.value.__cause__ is None
    # Anything Hub-shaped goes too, even a token nobody told us about.
    assert redact("a hf_SomeOtherToken99 b") == "a hf_*** b"


def test_dry_run_lists_only_the_allowlist(adapter):
    never = _seed_junk(adapter)
    (adapter / "plm_tune_training.json").write_text('{"method": "lora"}\n')

    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", "--dry-run")
    assert result.returncode == 0, result.stderr
    listed = [line.split(" (")[0].strip() for line in result.stdout.split("README.md, ")[0].splitlines()[1:]
              if line.startswith("  ") and not line.startswith("  total: ")]  # "  name (size)"
    assert listed == ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                      "plm_tune_training.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert not [name for name in listed for bad in never if bad in name]
    assert "Not uploaded: passwd is a symlink" in result.stdout and "Not uploaded: etc is a symlink" in result.stdout
    assert "root:" not in result.stdout  # /etc/passwd was never read
    assert files_to_upload(adapter) == listed


def test_push_uploads_exactly_the_plan(adapter, tmp_path, monkeypatch):
    """The real upload_folder filter, fed with what push_adapter passes, sends the planned files only."""
    from huggingface_hub.utils import filter_repo_objects

    _seed_junk(adapter)
    sent = {}

    def upload_folder(api, **kwargs):
        folder = kwargs["folder_path"]
        # upload_folder's own listing: rglob + is_file, which follows symlinks; the patterns must stop them.
        paths = [p.relative_to(folder).as_posix() for p in sorted(Path(folder).glob("**/*")) if p.is_file()]
        sent["files"] = sorted(filter_repo_objects(paths, allow_patterns=kwargs.get("allow_patterns"),
                                                   ignore_patterns=kwargs.get("ignore_patterns")))
        return "https://huggingface.co/me/plm-lora/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push_adapter(adapter, "me/plm-lora", token=TOKENS["argument"])
    assert sent["files"] == files_to_upload(adapter)
    assert "# Model Card for Model ID" not in (adapter / "README.md").read_text()  # peft's template was replaced


def test_push_refuses_extra_files_and_allowlisted_symlinks(adapter, monkeypatch):
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("no network call expected"))
    (adapter / "x.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ValueError, match=r"will not include x\.npy.*dataset repo"):
        push_plan(adapter, "me/plm-lora", include=["x.npy"])
    with pytest.raises(FileNotFoundError, match="`include` eval/report.html: there is no"):
        push_plan(adapter, "me/plm-lora", include=["eval/report.html"])
    (adapter / "eval").mkdir()
    (adapter / "eval" / "report.html").write_text("<html></html>")
    assert "eval/report.html" not in push_plan(adapter, "me/plm-lora").files  # only on request
    assert "eval/report.html" in push_plan(adapter, "me/plm-lora", include=["eval/report.html"]).files

    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", "--dry-run", "--include", ".env")
    assert result.returncode == 2 and "will not include .env" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

    real = adapter / "tokenizer.json"
    moved = adapter.parent / "elsewhere.json"
    real.rename(moved)
    real.symlink_to(moved)
    with pytest.raises(ValueError, match="tokenizer.json is a symlink, which a push never follows"):
        push_plan(adapter, "me/plm-lora")


# ------------------------------------------------------------------------------------------ the card


@pytest.fixture(scope="module")
def quickstart_run(tiny_plm_path, tmp_path_factory):
    """The README quickstart on the tiny PLM, 2 steps with a checkpoint: TRL writes its card, peft amends it."""
    from conftest import make_image
    from trl import SFTConfig

    from data_adapters import from_image_folder
    from plm_tune import MediaArguments, build_trainer, load_model
    from plm_tune.after_training.outputs import finish_run

    folder = tmp_path_factory.mktemp("quickstart")
    photos = folder / "my_photos"
    photos.mkdir()
    rows = ["file_name,caption"]
    for n in range(6):
        make_image(64, 48, seed=n).save(photos / f"photo_{n}.png")
        rows.append(f"photo_{n}.png,A noisy picture number {n}.")
    (photos / "metadata.csv").write_text("\n".join(rows) + "\n")
    samples = from_image_folder(str(photos), prompt="Describe this image.").train_test_split(test_size=2, seed=0)
    model, processor = load_model(str(tiny_plm_path), method="lora", freeze=["vision"], seed=0)
    args = SFTConfig(output_dir=str(folder / "outputs/my-photos"), max_steps=2, save_steps=2,
                     per_device_train_batch_size=2, learning_rate=2e-4, max_length=4096, logging_steps=1,
                     report_to="none", bf16=False, disable_tqdm=True, activation_checkpointing=False)
    trainer = build_trainer(model, processor, samples["train"], args=args, media=MediaArguments(max_tiles=1))
    trainer.train()
    finish_run(trainer, eval_set=samples["test"], training_info={"method": "lora", "max_tiles": 1}, max_new_tokens=2)
    return folder / "outputs/my-photos"


def test_dry_run_shows_plm_tunes_card_in_place_of_trls(quickstart_run, tiny_plm_path):
    readme = (quickstart_run / "README.md").read_text()
    assert "fine-tuned version of" in readme  # TRL's card is what training left
    assert (quickstart_run / "checkpoint-2").is_dir()

    result = _cli("push", "--adapter", str(quickstart_run), "--repo-id", "you/plm-1b-my-photos", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "https://huggingface.co/you/plm-1b-my-photos" in out
    files, card = out.split("README.md, plm-tune's card:\n")
    assert "checkpoint-" not in files and "eval/" not in files and "eval_data" not in files
    assert "fine-tuned version of" not in card and "TRL" not in card
    assert f"`{tiny_plm_path}` (a local folder)" in card  # the real base, from adapter_config.json
    assert "**Method:** LoRA" in card and "# plm-1b-my-photos" in card
    assert "**Image tiles (max_tiles):** 1" in card
    assert (quickstart_run / "README.md").read_text() == readme  # a dry run writes nothing


def test_a_hand_written_card_is_kept_unless_overwrite_card(adapter):
    (adapter / "README.md").write_text("# My adapter\n\nTrained on my cat pictures.\n")
    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/cats", "--dry-run")
    assert "README.md, your own card (--overwrite-card replaces it):\n# My adapter" in result.stdout
    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/cats", "--dry-run", "--overwrite-card")
    assert "README.md, plm-tune's card:\n---" in result.stdout and "# cats" in result.stdout


@pytest.mark.parametrize(("text", "generated"), [
    ("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n", True),  # peft's template
    ("---\nbase_model: .cache/tiny-plm\ntags: [trl]\n---\n# Model Card for my-photos\n", True),
    ("---\nbase_model: facebook/Perception-LM-1B\n---\n# Radiology captions\n\nbase_model: ./mine\n", False),
    ("<!-- This model card has been generated automatically according to the information the Trainer had", True),
    ("# Notes\n\nThis model is great.\n", False),
])
def test_which_cards_are_generated(text, generated):
    from plm_tune.after_training.model_card import is_generated_card

    assert is_generated_card(text) is generated


def test_a_base_from_the_hub_cache_is_named_by_its_hub_id(adapter):
    snapshot = "/root/.cache/huggingface/hub/models--facebook--Perception-LM-1B/snapshots/0123abc"
    card = push_plan(adapter, "me/plm-lora", base_model=snapshot).card
    assert "base_model: facebook/Perception-LM-1B" in card
    assert "[facebook/Perception-LM-1B](https://huggingface.co/facebook/Perception-LM-1B)" in card
    assert "snapshots" not in card


BAD_INPUTS_TOKENS_AND_PATHS = (
    "a Hub that echoes the token as typed, quote(), quote(safe=''), quote_plus, twice URL-encoded",
    "a Hub that echoes the token as HTTP Basic auth base64 of user:token, :token and token, URL-safe base64",
    "a Hub that echoes the token as JSON \\u escapes, HTML entities and hex",
    "a Hub that echoes another, unknown hf_ token base64- and %-encoded",
    "--repo-id \"$HF_TOKEN\" (the token pasted as the repo id) at push and at train time (hub_model_id)",
    "--repo-id me/<an hf_ token nobody told us about>",
    "hub_token in the config and no HF_TOKEN or login: the train-time push must use it",
    "an 8 GB sparse data.safetensors next to an adapter; a stray shard next to a sharded model",
)


# ---- round three: TOKENS_AND_PATHS


def _encoded(token: str) -> dict[str, str]:
    """The forms a server or proxy may echo a token in."""
    import base64
    from urllib.parse import quote, quote_plus

    return {
        "typed": token, "quote": quote(token), "quote_safe_none": quote(token, safe=""),
        "quote_plus": quote_plus(token), "double_url": quote(quote(token, safe=""), safe=""),
        "basic_user": base64.b64encode(f"me:{token}".encode()).decode(),
        "basic_colon": base64.b64encode(f":{token}".encode()).decode(),
        "base64": base64.b64encode(token.encode()).decode(),
        "base64_urlsafe": base64.urlsafe_b64encode(f"ab:{token}".encode()).decode().rstrip("="),
        "json_u": "".join(f"\\u{ord(c):04x}" for c in token),
        "html": "".join(f"&#{ord(c)};" for c in token),
        "hex": token.encode().hex(),
    }


class _EchoHub:
    """An HTTP server on 127.0.0.1 that answers every request 401 with the request's token echoed in one encoding
    (``mode``; "all": every one) in its error body and X-Error-Message header, as a misconfigured proxy might."""

    def __init__(self, mode: str, other: str | None = None) -> None:
        import json as _json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
                forms = _encoded(other or sent)
                echo = " ".join(f"{k}={v}" for k, v in forms.items()) if mode == "all" else forms[mode]
                body = _json.dumps({"error": f"Invalid credentials {echo}"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Message", f"bad token {echo}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    servers = []

    def start(mode: str, other: str | None = None) -> _EchoHub:
        server = _EchoHub(mode, other)
        servers.append(server)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("mode", list(_encoded("x")))
@pytest.mark.parametrize("token", [TOKENS["env"], "hf_EchoedToken0123456789abcdefghijklmn"])
def test_a_hub_echoing_the_token_in_any_encoding_never_gets_it_printed(adapter, echo_hub, mode, token):
    echo_hub(mode)
    with pytest.raises(PushError) as error:
        push_folder(adapter, "me/plm-lora", token=token)
    message = str(error.value)
    assert "401" in message or "Invalid credentials" in message, message  # the server's answer reached us
    for name, form in _encoded(token).items():
        assert form not in message, (name, message)
    assert "***" in message


def test_another_hub_token_echoed_encoded_is_redacted_too(adapter, echo_hub):
    """A token we were never told about (a proxy's, someone else's): caught by its hf_ shape once decoded."""
    other = "hf_SomeoneElsesToken0123456789abcdefgh"
    echo_hub("all", other=other)
    with pytest.raises(PushError) as error:
        push_folder(adapter, "me/plm-lora", token=TOKENS["argument"])
    message = str(error.value)
    leaked = [name for name, form in _encoded(other).items() if form in message]
    assert leaked == [], message


def test_cli_push_to_an_echoing_hub_prints_one_line_without_the_token(adapter, tmp_path):
    server = _EchoHub("all")
    try:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKENS["env"],
               "HF_TOKEN_PATH": str(tmp_path / "no-login"), "HF_HOME": str(tmp_path / "hf-home")}
        result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", env=env)
    finally:
        server.close()
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Invalid credentials" in result.stderr or "401" in result.stderr
    for name, form in _encoded(TOKENS["env"]).items():
        assert form not in result.stdout + result.stderr, name


def test_the_token_as_repo_id_is_refused_in_one_line_without_echoing_it(adapter, tmp_path):
    from plm_tune.after_training.push import check_push_ready

    token = "hf_PastedAsRepoId0123456789abcdefghijkl"
    env = {"HF_TOKEN": token, "HF_TOKEN_PATH": str(tmp_path / "no-login")}
    for repo_id in (token, f"me/{token}"):
        result = _cli("push", "--adapter", str(adapter), "--repo-id", repo_id, "--dry-run", env=env)
        assert result.returncode != 0 and token not in result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "holds a Hub token, not a repo id" in result.stderr
    # A token nobody told us about, shaped like one, and a token of another shape equal to the one in use.
    with pytest.raises(ValueError, match="holds a Hub token") as error:
        push_plan(adapter, "me/hf_" + "Q" * 34)
    assert "Q" * 34 not in str(error.value)
    with pytest.raises(ValueError, match="holds a Hub token"):
        push_plan(adapter, "me/sk-live-stored42", token="sk-live-stored42")
    # At train time (push_to_hub with hub_model_id), before any training.
    with pytest.raises(ValueError, match=r"push_to_hub: `hub_model_id` holds a Hub token") as error:
        check_push_ready(token, output_dir=str(tmp_path / "out"), token=token, method="lora")
    assert token not in str(error.value)


def test_a_configs_hub_token_is_the_push_token_and_never_written(tiny_plm_path, tmp_path, monkeypatch):
    """finetune with push_to_hub and hub_token, no HF_TOKEN and no login: the check passes on hub_token, the
    push sends it (the server sees it), and no file of the run, training_args.bin included, holds it."""
    from huggingface_hub import constants
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.after_training.push import check_push_ready
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    token = "hf_ConfigHubToken0123456789abcdefghijk"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login"))
    with pytest.raises(ValueError, match="no Hugging Face token"):
        check_push_ready("me/plm", method="lora")  # without it, nothing to push with
    assert check_push_ready("me/plm", token=token, method="lora") == "me/plm"

    server = _EchoHub("typed")  # answers 401, quoting what it was sent: proof the token went out
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "run"
    args = SFTConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, report_to="none", bf16=False,
                     max_length=None, save_steps=1, logging_steps=1, disable_tqdm=True, push_to_hub=True,
                     hub_model_id="me/plm", hub_token=token)
    samples = synthetic_shapes(4, seed=0, max_tiles=1)
    try:
        with pytest.raises(PushError, match=r"Invalid credentials \*\*\*") as error:
            finetune(samples, None, ModelArguments(model_name_or_path=str(tiny_plm_path), method="lora"),
                     MediaArguments(max_tiles=1), args, EvalArguments(generate_eval=False))
    finally:
        server.close()
    assert token not in str(error.value)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written) and (out / "adapter_model.safetensors").is_file()
    assert [p for p in written if token.encode() in p.read_bytes()] == []


def test_the_push_plan_shows_sizes_and_leaves_out_weights_the_model_does_not_load(adapter, tiny_plm_path, tmp_path):
    big = adapter / "data.safetensors"
    with open(big, "wb") as f:
        f.truncate(8 * 10**9)  # sparse: 8 GB apparent size, no disk used
    plan = push_plan(adapter, "me/plm-lora")
    assert "data.safetensors" not in plan.files and "data.safetensors" in plan.left_out
    assert plan.stray_weights == ["data.safetensors"] and files_to_upload(adapter) == plan.files
    assert plan.sizes["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").stat().st_size

    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Not uploaded: data.safetensors (8.0 GB) is a .safetensors file this adapter folder's adapter does " \
           "not load." in result.stdout
    assert re.search(r"^  adapter_model\.safetensors \([\d.]+ [kM]?B\)$", result.stdout, re.M)
    assert re.search(r"^  total: [\d.]+ [kM]?B$", result.stdout, re.M)

    # A model folder (the tiny PLM, as save_pretrained wrote it): model.safetensors goes, a shard-looking file
    # that no index names does not.
    folder = Path(shutil.copytree(tiny_plm_path, tmp_path / "model"))
    (folder / "model-00009-of-00009.safetensors").write_bytes(b"not a shard")
    plan = push_plan(folder, "me/plm-full")
    assert plan.stray_weights == ["model-00009-of-00009.safetensors"]
    assert "model.safetensors" in plan.files
