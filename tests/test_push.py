"""`plm-tune push` as a careless or hostile setup meets it: secrets in server errors, junk and symlinks in the
folder, someone else's card. Real adapter folders from the tiny PLM; only the Hub's network boundary
(HfApi.create_repo / upload_folder) is replaced, in process or in the CLI's own process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from plm_tune.push import PushError, files_to_upload, push_adapter, push_plan, redact

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
    code = f"import sys\n{hub}\nfrom plm_tune.cli import main\nsys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("PLM_TUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment,
                          cwd=ROOT, timeout=600)


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
    assert result.returncode == 1
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
    listed = [line.strip() for line in result.stdout.split("README.md, ")[0].splitlines()[1:]
              if line.startswith("  ")]
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
    with pytest.raises(FileNotFoundError, match="--include eval/report.html: there is no"):
        push_plan(adapter, "me/plm-lora", include=["eval/report.html"])
    (adapter / "eval").mkdir()
    (adapter / "eval" / "report.html").write_text("<html></html>")
    assert "eval/report.html" not in push_plan(adapter, "me/plm-lora").files  # only on request
    assert "eval/report.html" in push_plan(adapter, "me/plm-lora", include=["eval/report.html"]).files

    result = _cli("push", "--adapter", str(adapter), "--repo-id", "me/plm-lora", "--dry-run", "--include", ".env")
    assert result.returncode == 1 and "will not include .env" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

    real = adapter / "tokenizer.json"
    moved = adapter.parent / "elsewhere.json"
    real.rename(moved)
    real.symlink_to(moved)
    with pytest.raises(ValueError, match="tokenizer.json is a symlink, which a push never follows"):
        push_plan(adapter, "me/plm-lora")
