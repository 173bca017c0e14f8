"""Pushing a full finetune and a merged model to a local fake Hub, and the train-time push check.

The folders are real (a 2-step full finetune of the tiny PLM through ``finetune``, a real ``merge_adapter``); the
Hub is ``FakeHub``, an HTTP server on 127.0.0.1 that answers the endpoints huggingface_hub's own client calls
(``HfApi.create_repo``, ``repo_info``, ``create_branch``, ``upload_folder``: preupload, commit, pull requests),
so every request is the real client's, sent as it would be to huggingface.co. Limits of the fake: every file is
answered as a "regular" upload (the real Hub answers "lfs" for weights, which goes to Xet storage), and a
token is just compared with the expected one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch
from huggingface_hub import ModelCard

from plm_tune.after_training.model_card import folder_kind
from plm_tune.after_training.push import check_push_ready, hub_repo_id, push_folder, push_plan

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_FakeHubWriteToken0123456789abcdefgh"  # shaped like a real one (hf_ + 34 characters)
USER = "me"
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "chat_template.jinja",
               "processor_config.json", "tokenizer.json", "tokenizer_config.json", "plm_tune_training.json",
               "README.md"}


# ------------------------------------------------------------------------------------------- the fake Hub


class FakeHub(ThreadingHTTPServer):
    """A Hub on 127.0.0.1: repos as ``{repo_id: {ref: {path: bytes}}}``, and a log of every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.private: dict[str, bool] = {}
        self.prs: dict[str, list[dict]] = {}
        self.requests: list[dict] = []  # {"method", "path", "query", "json" | "commit", "authorized"}
        self.lock = threading.Lock()

    def commits(self) -> list[dict]:
        return [r for r in self.requests if "commit" in r]

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of the repo API requests (not the client's own look-ups, e.g. agent detection's)."""
        return [(r["method"], r["path"]) for r in self.requests
                if r["path"].startswith(("/api/repos/", "/api/models/", "/api/validate-yaml"))]


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:  # quiet: the test reads server.requests instead
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _send(self, status: int, body: dict, error_code: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:  # huggingface_hub's hf_raise_for_status reads these headers (utils/_http.py)
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", body["error"])
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {"method": method, "path": url.path, "query": parse_qs(url.query),
                  "authorized": self.headers.get("Authorization") == f"Bearer {TOKEN}"}
        hub = self.server
        with hub.lock:
            hub.requests.append(record)
            if not record["authorized"]:
                return self._send(401, {"error": "Invalid credentials in Authorization header"})
            if self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
                record["commit"] = [json.loads(line) for line in body.splitlines() if line.strip()]
            elif body:
                record["json"] = json.loads(body)
            parts = url.path.split("/")  # "", "api", "models", namespace, name, action, rest...
            if url.path == "/api/repos/create":
                return self._create_repo(record["json"])
            if url.path == "/api/validate-yaml":  # upload_folder sends README.md here first (HfApi._validate_yaml)
                return self._validate_yaml(record["json"]["content"])
            if parts[:3] != ["", "api", "models"] or len(parts) < 6:
                return self._send(404, {"error": f"no route {url.path}"})
            repo_id, action, rest = f"{parts[3]}/{parts[4]}", parts[5], unquote("/".join(parts[6:]))
            if repo_id not in hub.repos:
                return self._send(404, {"error": "Repository not found"}, "RepoNotFound")
            if action == "revision":
                return self._repo_info(repo_id, rest)
            if action == "branch":
                hub.repos[repo_id].setdefault(rest, dict(hub.repos[repo_id]["main"]))
                return self._send(200, {})
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                         for f in record["json"]["files"]]
                return self._send(200, {"files": files})
            if action == "discussions" and method == "POST":
                return self._send(200, {"num": self._open_pr(repo_id, record["json"]["title"])})
            if action == "discussions":
                return self._pr_details(repo_id, int(rest))
            if action == "commit":
                return self._commit(repo_id, rest, record)
            return self._send(404, {"error": f"no route {url.path}"})

    def _create_repo(self, payload: dict) -> None:
        hub = self.server
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{hub.url}/{repo_id}"
        if repo_id in hub.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        hub.repos[repo_id] = {"main": {}}
        hub.private[repo_id] = payload.get("visibility") == "private"
        return self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, content: str) -> None:
        """What the fake can check of the Hub's validation: the front matter parses as huggingface_hub's
        ``ModelCardData`` (its ``model-index`` included) and names no local folder as the base."""
        try:
            data = ModelCard(content).data
            assert not str(data.base_model or "").startswith(("/", ".", "~")), "base_model is a local path"
        except Exception as error:  # the Hub answers 400 with {"errors": [{"message"}]}
            return self._send(400, {"error": "Invalid metadata", "errors": [{"message": str(error)}]})
        return self._send(200, {"warnings": []})

    def _repo_info(self, repo_id: str, revision: str) -> None:
        files = self.server.repos[repo_id].get(revision)
        if files is None:
            return self._send(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
        sha = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
        return self._send(200, {"id": repo_id, "sha": sha, "siblings": [{"rfilename": name} for name in files]})

    def _open_pr(self, repo_id: str, title: str) -> int:
        prs = self.server.prs.setdefault(repo_id, [])
        num = len(prs) + 1
        prs.append({"num": num, "title": title})
        self.server.repos[repo_id][f"refs/pr/{num}"] = dict(self.server.repos[repo_id]["main"])
        return num

    def _pr_details(self, repo_id: str, num: int) -> None:
        pr = self.server.prs[repo_id][num - 1]
        return self._send(200, {
            "num": num, "title": pr["title"], "author": {"name": USER}, "createdAt": "2025-01-01T00:00:00.000Z",
            "status": "open", "repo": {"name": repo_id, "type": "model"}, "isPullRequest": True, "events": [],
            "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [],
        })

    def _commit(self, repo_id: str, revision: str, record: dict) -> None:
        hub = self.server
        pr_url = None
        if record["query"].get("create_pr") == ["1"]:  # the client without hf_xet opens the PR with its commit
            num = self._open_pr(repo_id, record["commit"][0]["value"]["summary"])
            revision, pr_url = f"refs/pr/{num}", f"{hub.url}/{repo_id}/discussions/{num}"
        if revision not in hub.repos[repo_id]:
            return self._send(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
        for line in record["commit"][1:]:
            if line["key"] != "file":
                return self._send(400, {"error": f"the fake Hub takes regular files only, got {line['key']}"})
            hub.repos[repo_id][revision][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(json.dumps(record["commit"]).encode()).hexdigest()
        return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                "pullRequestUrl": pr_url})


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub, running; huggingface_hub in this process and ``hub_env`` for a child process point at it."""
    from huggingface_hub import constants

    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server.env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN,
                  "HF_TOKEN_PATH": str(tmp_path / "no-login"), "HF_HOME": str(tmp_path / "hf-home"),
                  "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    yield server
    server.shutdown()
    server.server_close()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environment.pop("PLM_TUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=ROOT)


def _card(files: dict[str, bytes]) -> ModelCard:
    return ModelCard(files["README.md"].decode())


# ------------------------------------------------------------------------------------------- the folders


@pytest.fixture(scope="module")
def full_run(tiny_plm_path, tmp_path_factory):
    """A 2-step full finetune through ``finetune``, as a recipe runs it: save, eval, card facts, no push."""
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    out = tmp_path_factory.mktemp("full") / "plm-full"
    samples = synthetic_shapes(12, seed=0, max_tiles=1)
    args = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, report_to="none", bf16=False,
                     max_length=None, save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    finetune(samples.select(range(8)), samples.select(range(8, 12)),
             ModelArguments(model_name_or_path=str(tiny_plm_path), method="full"), MediaArguments(max_tiles=1),
             args, EvalArguments(eval_max_new_tokens=4, compare_base=False), datasets=["me/shapes"])
    return out


@pytest.fixture
def full(full_run, tmp_path):
    return Path(shutil.copytree(full_run, tmp_path / "plm-full"))


@pytest.fixture(scope="module")
def merged_model(tmp_path_factory):
    """``merge_adapter`` of a LoRA adapter whose base came from the Hub (a tiny PLM in the Hub cache's layout)."""
    from transformers import AutoProcessor

    from plm_tune import load_model
    from plm_tune.after_training.merge import merge_adapter
    from plm_tune.modeling.run_folder import write_training_info
    from plm_tune.modeling.testing import build_tiny_plm

    root = tmp_path_factory.mktemp("merged")
    base = build_tiny_plm(root / "hub/models--facebook--Perception-LM-1B/snapshots/0123abc", seed=0)
    model, _ = load_model(str(base), method="lora", seed=0)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter an effect, so the merge changes weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(root / "adapter")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "adapter")
    write_training_info(root / "adapter", {"method": "lora", "lora_r": 16, "lora_alpha": 32, "max_tiles": 1,
                                           "datasets": ["me/shapes"]})
    return merge_adapter(root / "adapter", root / "plm-merged", dtype=torch.float32)


@pytest.fixture
def merged(merged_model, tmp_path):
    return Path(shutil.copytree(merged_model, tmp_path / "plm-merged"))


# ------------------------------------------------------------------------------------------------ tests


def test_folder_kinds_come_from_the_files_and_the_training_record(full, merged, tiny_plm_path, tmp_path):
    assert folder_kind(full) == "full" and folder_kind(merged) == "merged"
    assert json.loads((merged / "plm_tune_training.json").read_text())["base_model"].endswith("snapshots/0123abc")
    assert folder_kind(tiny_plm_path) == "full"  # a model that records nothing: no claim that it is a merge
    assert "(no plm_tune_training.json)" in push_plan(tiny_plm_path, "me/x").card
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json .* nor config.json"):
        folder_kind(tmp_path)


def test_a_model_cards_snippet_loads_it_without_peft_and_answers(merged, tmp_path):
    import contextlib
    import io
    import re

    from conftest import make_image

    card = push_plan(merged, "me/plm-merged").card
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    assert "peft" not in snippet
    make_image(90, 50).save(tmp_path / "image.png")
    snippet = (snippet.replace('"me/plm-merged"', repr(str(merged)))
               .replace('"image.png"', repr(str(tmp_path / "image.png")))
               .replace("max_new_tokens=", "max_new_tokens=3 or "))  # the tiny model's words mean nothing
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "model-card-snippet", "exec"), {})
    assert out.getvalue().strip()


def test_a_full_finetune_pushed_at_train_time_lands_whole_with_its_card_and_model_index(
    tiny_plm_path, tmp_path, hub
):
    """``push_to_hub: true`` through ``finetune``: checked first, trained, saved, evaluated, pushed to the fake
    Hub; the remote folder loads and gives the trained model's logits."""
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    out = tmp_path / "plm-full"
    samples = synthetic_shapes(12, seed=0, max_tiles=1)
    args = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, report_to="none", bf16=False,
                     max_length=None, save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3,
                     push_to_hub=True, hub_model_id="me/plm-full", hub_private_repo=True)
    outputs = finetune(samples.select(range(8)), samples.select(range(8, 12)),
                       ModelArguments(model_name_or_path=str(tiny_plm_path), method="full"),
                       MediaArguments(max_tiles=1), args, EvalArguments(eval_max_new_tokens=4, compare_base=False),
                       datasets=["me/shapes"])

    assert outputs.hub_url.startswith(f"{hub.url}/me/plm-full/commit/")
    remote = hub.repos["me/plm-full"]["main"]
    assert set(remote) == MODEL_FILES  # no eval data, no TRL card, no checkpoints, no training_args.bin
    assert hub.private["me/plm-full"] and all(
        r["authorized"] for r in hub.requests if r["path"].startswith(("/api/repos/", "/api/models/")))
    (commit,) = hub.commits()
    assert commit["commit"][0]["value"]["summary"] == "Upload fully finetuned PLM with plm-tune"
    assert remote["model.safetensors"] == (out / "model.safetensors").read_bytes()

    card = _card(remote)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert "full" in card.data.tags and "lora" not in card.data.tags
    assert card.data.datasets == ["me/shapes"]
    assert 'AutoModelForImageTextToText.from_pretrained("me/plm-full"' in card.text
    assert "PeftModel" not in card.text and "A full finetune of" in card.text
    held_out = json.loads((out / "eval/eval.json").read_text())["metrics"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {name: value for name, value in held_out.items() if name != "samples"}
    assert {"exact_match", "sentence_bleu", "rouge_l"} <= set(results)
    assert {(r.task_type, r.dataset_type) for r in card.data.eval_results} == {("image-text-to-text", "me/shapes")}
    assert "model-index:" in remote["README.md"].decode()

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name, data in remote.items():
        (pulled / name).write_bytes(data)
    trained = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    reloaded = AutoModelForImageTextToText.from_pretrained(pulled, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)


def test_cli_pushes_a_merged_model_to_a_new_branch_with_the_commit_message(merged, hub):
    result = _cli("push", "--folder", str(merged), "--repo-id", "me/plm-merged", "--revision", "v1",
                  "--commit-message", "First merge", env=hub.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Pushed: {hub.url}/me/plm-merged/commit/")
    # As `hf upload --revision` does: the revision is looked up, missing, created as a branch, then committed to.
    assert hub.calls()[:3] == [("POST", "/api/repos/create"), ("GET", "/api/models/me/plm-merged/revision/v1"),
                               ("POST", "/api/models/me/plm-merged/branch/v1")]
    (commit,) = hub.commits()
    assert commit["path"] == "/api/models/me/plm-merged/commit/v1"
    assert commit["commit"][0]["value"]["summary"] == "First merge"
    assert hub.repos["me/plm-merged"]["main"] == {}  # nothing went to main
    remote = hub.repos["me/plm-merged"]["v1"]
    assert set(remote) == MODEL_FILES
    assert TOKEN not in result.stdout + result.stderr

    card = _card(remote)
    assert card.data.base_model == "facebook/Perception-LM-1B"  # from the cache path merge_adapter recorded
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "LoRA adapter merged into its weights" in card.text and "`plm-tune merge`" in card.text
    assert 'AutoModelForImageTextToText.from_pretrained("me/plm-merged"' in card.text and "PeftModel" not in card.text
    assert card.data.eval_results is None  # a merge has no held-out eval of its own

    # Again to the same branch: it exists now, so it is not created twice.
    result = _cli("push", "--folder", str(merged), "--repo-id", "me/plm-merged", "--revision", "v1", env=hub.env)
    assert result.returncode == 0, result.stderr
    assert hub.calls().count(("POST", "/api/models/me/plm-merged/branch/v1")) == 1


def test_cli_create_pr_opens_a_pull_request_against_main(full, hub):
    result = _cli("push", "--folder", str(full), "--repo-id", "me/plm-full", "--create-pr",
                  "--commit-message", "Try the 2-step model", env=hub.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Opened a pull request: {hub.url}/me/plm-full/discussions/1"
    assert hub.prs["me/plm-full"] == [{"num": 1, "title": "Try the 2-step model"}]
    assert hub.repos["me/plm-full"]["main"] == {}
    assert set(hub.repos["me/plm-full"]["refs/pr/1"]) == MODEL_FILES
    (commit,) = hub.commits()
    assert commit["commit"][0]["value"]["summary"] == "Try the 2-step model"
    assert not [path for _, path in hub.calls() if "/branch/" in path]  # a PR never creates a branch


def test_create_pr_with_a_revision_is_refused_before_any_request(full, hub):
    result = _cli("push", "--folder", str(full), "--repo-id", "me/plm-full", "--create-pr", "--revision", "v1",
                  env=hub.env)
    assert result.returncode == 2  # usage
    assert result.stderr.startswith("plm-tune push: error: A pull request is always opened against the main branch")
    assert len(result.stderr.strip().splitlines()) == 1 and hub.calls() == []


def test_python_push_takes_the_same_options_and_a_bare_name_goes_to_the_tokens_user(merged, hub):
    url = push_folder(merged, "plm-merged", commit_message="via Python", create_pr=True)
    assert url == f"{hub.url}/me/plm-merged/discussions/1"
    remote = hub.repos["me/plm-merged"]["refs/pr/1"]
    assert 'from_pretrained("me/plm-merged"' in remote["README.md"].decode()  # the full id, not the bare name


@pytest.mark.parametrize("breakage", ["no weights", "pickle weights", "missing shard", "no processor"])
def test_an_incomplete_model_folder_is_refused_before_any_request(full, hub, breakage):
    if breakage == "no weights":
        (full / "model.safetensors").unlink()
        expected = FileNotFoundError, "has config.json but no model.safetensors"
    elif breakage == "pickle weights":
        (full / "model.safetensors").rename(full / "pytorch_model.bin")
        expected = ValueError, "pytorch_model.bin, a pickle"
    elif breakage == "missing shard":
        (full / "model.safetensors").rename(full / "model-00001-of-00002.safetensors")
        weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        (full / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        expected = FileNotFoundError, "names model-00002-of-00002.safetensors, which the folder lacks"
    else:
        (full / "processor_config.json").unlink()
        expected = FileNotFoundError, "lacks processor_config.json or preprocessor_config.json"
    with pytest.raises(expected[0], match=expected[1]):
        push_folder(full, "me/plm-full")
    assert hub.calls() == []


# ------------------------------------------------------------------------------ the train-time check


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No token anywhere: no HF_TOKEN, an empty login file location, the Hub reachable."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "token"


def test_check_push_ready(no_login, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(ValueError, match=r"^push_to_hub: no Hugging Face token .* `hf auth login`"):
        check_push_ready("me/plm-run", method="lora")
    no_login.write_text(TOKEN)  # `hf auth login` stored one
    assert check_push_ready("me/plm-run", method="full") == "me/plm-run"
    assert check_push_ready(None, output_dir="outputs/my-photos") == "my-photos" == hub_repo_id(None, "outputs/my-photos")
    with pytest.raises(ValueError, match=r"`hub_model_id` 'me/plm run' is not a Hub repo id like 'user/name'"):
        check_push_ready("me/plm run")
    with pytest.raises(ValueError, match="method 'adapter' is none of lora, dora, qlora, full"):
        check_push_ready("me/plm-run", method="adapter")
    for pasted in (TOKEN, f"me/{TOKEN}", "hf_AnotherFullLengthToken0123456789abcd"):
        with pytest.raises(ValueError, match="holds a Hub token, not a repo id") as error:
            check_push_ready(pasted)
        assert "hf_" not in str(error.value)  # never echoed
    assert check_push_ready("me/hf_finetuned-2024") == "me/hf_finetuned-2024"  # a name that starts with hf_
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE set"):
        check_push_ready("me/plm-run")


@pytest.mark.parametrize("problem", ["no token", "bad repo id", "token as repo id"])
def test_finetune_refuses_a_push_it_cannot_make_before_loading_any_weights(no_login, tmp_path, problem):
    """The model path does not exist: had ``finetune`` got as far as ``load_model``, that would be the error."""
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    repo_id = {"no token": "me/plm-run", "bad repo id": "me/plm--run", "token as repo id": TOKEN}[problem]
    if problem != "no token":
        no_login.write_text("hf_SomeOtherStoredLogin0123456789abcdef")
    out = tmp_path / "run"
    args = SFTConfig(output_dir=str(out), max_steps=2, report_to="none", bf16=False, push_to_hub=True,
                     hub_model_id=repo_id)
    expected = {"no token": "no Hugging Face token", "bad repo id": "is not a Hub repo id",
                "token as repo id": "holds a Hub token, not a repo id"}[problem]
    with pytest.raises(ValueError, match=expected) as error:
        finetune(synthetic_shapes(4, seed=0), None, ModelArguments(model_name_or_path=str(tmp_path / "no-model")),
                 MediaArguments(), args, EvalArguments())
    assert TOKEN not in str(error.value)
    assert not out.exists()  # nothing trained, nothing saved
