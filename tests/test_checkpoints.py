"""``ensure_writable`` under several processes: who probes the output folder, and probes that share it."""

from __future__ import annotations

import multiprocessing

import pytest

from plm_tune.training.checkpoints import CheckpointWriteError, ensure_writable, guarded_train

PROBES = 300


def _probe_repeatedly(folder: str, start, errors) -> None:
    start.wait()  # both processes begin together, so their probes overlap
    for _ in range(PROBES):
        try:
            ensure_writable(folder, should_save=True)
        except Exception as err:  # noqa: BLE001 - any failure is the finding, sent back to the test
            errors.put(f"{type(err).__name__}: {err}")
            return


def test_two_processes_probing_one_folder_never_fail(tmp_path):
    # Two saving processes on one folder: two nodes with save_on_each_node on a shared file system.
    context = multiprocessing.get_context("fork")  # the children only touch files, never torch
    start, errors = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_probe_repeatedly, args=(str(tmp_path), start, errors)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == [] and [w.exitcode for w in workers] == [0, 0], f"concurrent probes failed: {found}"
    assert list(tmp_path.iterdir()) == [], "a probe file was left behind"


@pytest.mark.parametrize(("rank", "local_rank"), [("1", "1"), ("3", "0")])
def test_a_rank_other_than_0_does_not_touch_the_folder(tmp_path, monkeypatch, rank, local_rank):
    # The variables torchrun / accelerate launch set; torch.distributed is not initialised in the tests, so the
    # rank is read from RANK, as the Trainer's process_index would be after init_process_group.
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "4")
    (tmp_path / "file").write_text("a file where a folder should be")
    ensure_writable(str(tmp_path / "out"))
    ensure_writable(str(tmp_path / "file" / "out"))  # unwritable, but not this process's to check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_rank_0_probes_and_an_explicit_should_save_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ensure_writable(str(tmp_path / "main"))
    assert (tmp_path / "main").is_dir() and list((tmp_path / "main").iterdir()) == []
    ensure_writable(str(tmp_path / "not-saving"), should_save=False)
    assert not (tmp_path / "not-saving").exists()
    # save_on_each_node: node 2's local main process (global rank 2) saves, so it probes its own disk.
    monkeypatch.setenv("RANK", "2")
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(CheckpointWriteError, match=r"output_dir '.*file/out' cannot be written"):
        ensure_writable(str(tmp_path / "file" / "out"), should_save=True)


def test_guarded_train_passes_should_save_to_the_probe(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    unwritable = str(tmp_path / "file" / "out")
    ran = guarded_train(lambda **kwargs: kwargs, unwritable, should_save=False, trial=None)
    assert ran == {"resume_from_checkpoint": None, "trial": None}
    with pytest.raises(CheckpointWriteError):
        guarded_train(lambda **kwargs: kwargs, unwritable, should_save=True)
