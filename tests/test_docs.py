"""The Python in README.md and docs/*.md that is marked runnable runs, on the tiny PLM, so the docs cannot rot.

A block is marked by its fence's info string, ```` ```python runnable ````; other ``python`` blocks are
illustrations (a signature, a sample's shape) and are not run. Right after a runnable block, HTML comments
(invisible on GitHub) say what it must do, and each runnable block needs at least one::

    <!-- expect prints: Eval answers: -->                       stdout contains this text
    <!-- expect file: outputs/my-photos/adapter_model.safetensors -->   this file exists afterwards

How a block written for PLM-1B runs here, by plain text substitution (nothing else is changed):

* ``"facebook/Perception-LM-1B"`` becomes the path of the session's tiny random PLM (``tiny_plm_path``);
* ``max_steps=<number>`` becomes ``max_steps=2``.

The blocks of one page run in order, in one namespace (a later block may use an earlier one's names), in the
page's own process (``exec``: no second import of torch), from a fresh working folder that holds what the
docs tell the reader to have: ``my_photos/`` (6 PNGs and a ``metadata.csv`` with ``file_name,caption``) and
``scan.png``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import make_image

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python runnable\n(.*?)^```\n((?:<!-- expect [^\n]*-->\n)*)", re.S | re.M)
EXPECT = re.compile(r"<!-- expect (prints|file): (.*?) -->")
MODEL_ID = '"facebook/Perception-LM-1B"'


def runnable_blocks(page: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """(code, [(kind, value), ...]) for each runnable block of the page, in order."""
    return [(code, EXPECT.findall(expects)) for code, expects in BLOCK.findall(page.read_text())]


def pages_with_blocks() -> list[Path]:
    return [page for page in PAGES if runnable_blocks(page)]


def write_reader_files(folder: Path) -> None:
    photos = folder / "my_photos"
    photos.mkdir()
    rows = ["file_name,caption"]
    for i in range(6):
        make_image(80, 60, seed=i).save(photos / f"photo_{i}.png")
        rows.append(f"photo_{i}.png,Noise pattern number {i}.")
    (photos / "metadata.csv").write_text("\n".join(rows) + "\n")
    make_image(64, 48, seed=9).save(folder / "scan.png")


def test_readme_and_every_docs_page_are_checked():
    assert runnable_blocks(ROOT / "README.md"), "README.md lost its runnable quickstart"
    for page in PAGES:
        text = page.read_text()
        # A typo in the marker would silently turn a block into an illustration.
        for info in re.findall(r"^```python[ \t]*(\S.*)$", text, re.M):
            assert info == "runnable", f"{page.name}: unknown python block marker {info!r}; use 'runnable'"
        for code, expects in runnable_blocks(page):
            assert expects, f"{page.name}: the runnable block starting {code[:60]!r} has no <!-- expect ... -->"


@pytest.mark.parametrize("page", pages_with_blocks(), ids=lambda page: page.name)
def test_runnable_blocks_run_on_the_tiny_plm(page, tiny_plm_path, tmp_path, monkeypatch, capsys):
    write_reader_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, (code, expects) in enumerate(runnable_blocks(page), 1):
        code = code.replace(MODEL_ID, repr(str(tiny_plm_path)))
        code = re.sub(r"max_steps=\d+", "max_steps=2", code)
        exec(compile(code, f"{page.name} runnable block {number}", "exec"), namespace)
        printed = capsys.readouterr().out
        for kind, value in expects:
            if kind == "prints":
                assert value in printed, f"{page.name} block {number} should print {value!r}; printed:\n{printed[-2000:]}"
            else:
                assert (tmp_path / value).exists(), f"{page.name} block {number} should write {value}"
