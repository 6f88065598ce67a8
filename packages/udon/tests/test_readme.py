"""Every command and Python block of the package README runs (at toy scale); its reproduction table is the
committed measured one."""

from __future__ import annotations

import json
from pathlib import Path

from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results" / "reproduce"

TINY_MODEL = "model.kwargs={backbone: convnet, backbone_kwargs: {widths: [4, 8]}, teacher_dim: 16, student_dim: 8}"
EXTRA = {
    "train": [TINY_MODEL, "data.image_size=16", "data.update_every=2", "train.batch_size=6", "train.epochs=1"],
    "embed": ["--image-size", "16"],
    "eval": ["--image-size", "16"],
    "bench": ["--batch-size", "4", "--image-size", "8", "--steps", "1", "--rounds", "2"],
    "reproduce": [
        *("--quick", "--out", "reproduce", "--domains", "digits", "rotated_digits", "--image-size", "12"),
        *("--methods", "joint-uniform", "udon-dynamic", "specialists"),
    ],
}


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(uned_root, tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=[("/data/uned", str(uned_root))]):
        argv, sub = bramley_command(line)
        argv += EXTRA.get(sub, [])
        if sub == "train" and "uned_vit_b16" in argv:  # the paper recipe at toy scale, on the UnED fixture
            argv += ["data.domains=[cars, inshop]", "train.num_workers=0", "train.checkpoint_every=0"]
        assert bramley_main(argv) == 0, line
        ran.append(sub)
    assert {"train", "embed", "eval", "bench", "reproduce"} <= set(ran)
    assert (tmp_path / "runs" / "udon" / "model.safetensors").is_file()
    table = json.loads((tmp_path / "uned.json").read_text())
    assert table["merged"]["inshop"]["queries"] == 6 and table["separate"]["cars"]["queries"] == 9
    descriptors = json.loads((tmp_path / "descriptors.json").read_text())  # official format, the student (8-d here)
    assert sorted(descriptors["inshop"]) == ["index", "test"] and len(descriptors["cars"]["test"][0]) == 8
    reproduce = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert reproduce["quick"] and (tmp_path / "reproduce" / "udon.png").stat().st_size > 1000


def test_readme_table_is_the_committed_measurement():
    text = README.read_text()
    block = text.split("<!-- reproduce:start -->")[1].split("<!-- reproduce:end -->")[0]
    table = [line for line in (RESULTS / "table.md").read_text().splitlines() if line.startswith("|")]
    assert [line for line in block.splitlines() if line.startswith("|")] == table
    results = json.loads((RESULTS / "results.json").read_text())
    assert not results["quick"] and len(results["settings"]["seeds"]) == 2
    assert (RESULTS / "udon.png").is_file()


def test_changelog_exists():
    assert (PACKAGE / "CHANGELOG.md").is_file()
