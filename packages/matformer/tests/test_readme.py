"""Every command and Python block of the package README runs (paper recipes shrunk to toy scale, listed here), and
the README's reproduction and benchmark text is what the committed results say."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results"

TOY_VIT = [
    "model.kwargs.embed_dim=32",
    "model.kwargs.depth=2",
    "model.kwargs.num_heads=2",
    "model.kwargs.mlp_hidden=64",
]
TOY_LM = [
    "model.name=matlm",
    "model.kwargs={dim: 32, depth: 2, num_heads: 2, num_kv_heads: 1, mlp_hidden: 64, max_seq_len: 32}",
    "data.seq_len=16",
]
TOY_TRAIN = ["train.steps=2", "train.batch_size=4", "train.amp=none", "train.num_workers=0", "optim.warmup_steps=0"]
# extra arguments per README command, by (verb, recipe or checkpoint)
EXTRA = {
    "matvit_b16_imagenet": [*TOY_VIT, "model.kwargs.img_size=16", "data.image_size=16", *TOY_TRAIN],
    "matlm_180m": [*TOY_LM, *TOY_TRAIN, "eval.batch_size=2"],
    "bench": [
        "--model",
        "matvit",
        "--image-size",
        "16",
        "--batch-size",
        "2",
        "--train-batch-size",
        "2",
        "--rounds",
        "2",
    ],
    "reproduce": ["--quick", "--tasks", "vit", "--out", "reproduce"],
}


def _extra(argv: list[str], verb: str) -> list[str]:
    for key, extra in EXTRA.items():
        if key == verb or key in argv:
            return extra
    return []


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(image_folder, tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    for split in ("train", "val"):
        shutil.copytree(image_folder, tmp_path / "imagenet" / split)
    for name in ("text-corpus",):
        (tmp_path / name).mkdir()
        for i in range(24):  # 1 in 20 files is held out for validation
            (tmp_path / name / f"{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + 1\n" * 30)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    ran = []
    shrink = [(r"--image-size 224", "--image-size 16"), (r"--ffn 384", "--ffn 16")]
    for line in shell_commands(README, skip=("pip install",), rewrite=shrink):
        argv, verb = bramley_command(line)
        if verb == "eval" and "runs/matvit-b16" in argv:
            argv += ["--image-size", "16"]
        argv += _extra(argv, verb)
        assert bramley_main(argv) == 0, line
        ran.append(verb)
    assert {"train", "extract", "eval", "bench", "reproduce"} <= set(ran)
    assert json.loads((tmp_path / "runs" / "matlm-130k" / "config.json").read_text())["kwargs"]["granularities"] is None
    reproduce = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert reproduce["quick"] and (tmp_path / "reproduce" / "matformer.png").is_file()
    assert set(reproduce["claims"]["vit"]) >= {"nested_matches_separate", "mix_n_match_on_curve", "more_consistent"}


def _marked(tag: str) -> str:
    text = README.read_text()
    return text.split(f"<!-- {tag}:start -->\n", 1)[1].split(f"<!-- {tag}:end -->", 1)[0]


@pytest.mark.skipif(not (RESULTS / "reproduce" / "table.md").is_file(), reason="no committed reproduction")
def test_readme_reproduction_table_is_the_committed_run():
    table = (RESULTS / "reproduce" / "table.md").read_text().split("\n\n", 1)[1].strip()
    assert table in _marked("reproduction")
    results = json.loads((RESULTS / "reproduce" / "results.json").read_text())
    assert not results["quick"] and results["seeds"] == [0, 1]
    for kind, claims in results["claims"].items():
        for claim in ("nested_matches_separate", "mix_n_match_on_curve", "more_consistent"):
            word = "holds" if claims[claim] else "does not hold"
            assert f"{kind}:{claim}: {word}" in _marked("reproduction").replace("`", ""), (kind, claim)


@pytest.mark.skipif(not (RESULTS / "bench-cpu.json").is_file(), reason="no committed benchmark")
def test_readme_benchmark_numbers_are_the_committed_run():
    bench = json.loads((RESULTS / "bench-cpu.json").read_text())
    text = _marked("bench")
    for value in (bench["sliced_over_extracted"]["median"], bench["joint_over_one"]["median"]):
        assert f"{value:.2f}x" in text
    assert re.search(bench["model"], text)


@pytest.mark.parametrize("name", ["CHANGELOG.md"])
def test_docs_exist(name):
    assert (PACKAGE / name).is_file()
