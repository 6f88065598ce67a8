"""Every command and Python block of the package README runs (heavy arguments shrunk to toy scale, listed here)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from shared.markdown import bramley_command, run_python_blocks, shell_commands

README = Path(__file__).resolve().parents[1] / "README.md"

EXTRA = {
    "reproduce": ["--quick", "--out", "reproduce"],
    "eval": ["--image-size", "24"],
    "bench": [
        "--depth",
        "2",
        "--embed-dim",
        "32",
        "--num-heads",
        "2",
        "--samples",
        "4",
        "--batch-size",
        "2",
        "--min-size",
        "24",
        "--max-size",
        "40",
        "--rounds",
        "1",
    ],
}


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(image_folder, tmp_path, monkeypatch, tiny_recipe):
    from bramley.byteformer.convert import bramley_to_official
    from bramley.core.cli import main as bramley_main
    from bramley.core.registry import create_model

    for split in ("train", "val"):
        shutil.copytree(image_folder, tmp_path / "imagenet" / split)
    corenet = bramley_to_official(create_model("byteformer_tiny", num_classes=3, max_num_tokens=128).state_dict())
    torch.save(corenet, tmp_path / "imagenet_tiff.pt")  # a corenet-layout checkpoint for `convert`
    monkeypatch.chdir(tmp_path)
    # a two-block model and two steps for every training command (later overrides win)
    extra = {**EXTRA, "train": [*tiny_recipe, "train.steps=2", "optim.warmup_epochs=0"]}
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=[("/path/to/imagenet", "imagenet")]):
        if line.startswith("torchrun "):  # the same CLI in one process
            line = "bramley byteformer " + line.split("-m bramley.byteformer.cli ", 1)[1]
            line += " data.image_size=24 data.rand_augment=false"
        argv, sub = bramley_command(line)
        argv += extra.get(sub, [])
        assert bramley_main(argv) == 0, line
        ran.append(sub)
    assert {"reproduce", "train", "eval", "bench", "encode", "info", "convert"} <= set(ran)
    assert (tmp_path / "runs" / "bf-digits" / "model.safetensors").is_file()
    assert (tmp_path / "bf-ti-tiff-corenet" / "config.json").is_file()
    bench = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert bench["packed_over_padded"] > 0 and bench["max_abs_logit_diff_packed_vs_padded"] < 1e-4
    reproduce = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert reproduce["quick"] and (tmp_path / "reproduce" / "byteformer_reproduction.png").is_file()


@pytest.mark.parametrize("name", ["BENCHMARKS.md", "CHANGELOG.md"])
def test_docs_exist(name):
    assert (README.parent / name).is_file()


def test_readme_measured_numbers_come_from_results():
    """The README's reproduction table, timing, pixel baseline and CPU bench ratio are those in results/."""
    text = README.read_text()
    results = json.loads((README.parent / "results" / "results.json").read_text())
    bench = json.loads((README.parent / "results" / "bench-cpu.json").read_text())
    rows = {row["spec"]: row for row in results["table"]}
    seen = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[1].startswith("`") or cells[1].strip("`") not in rows:
            continue
        row = rows[cells[1].strip("`")]
        top1, std = (float(v) for v in cells[4].strip("*").split(" ± "))
        assert (int(cells[2]), int(cells[3])) == (row["bytes_mean"], row["tokens_mean"]), line
        assert (top1, std, float(cells[5])) == (
            round(row["top1"], 1),
            round(row["top1_std"], 1),
            round(row["chance"], 1),
        )
        seen.add(row["spec"])
    assert seen == set(rows), f"README table misses {set(rows) - seen}"
    assert f"{len(results['seeds'])} seeds" in text and f"{results['seconds']:.0f} s on a 2-core CPU" in text
    assert f"scores {results['pixel_logistic_regression_top1']:.1f}%" in text
    assert f"**{bench['packed_over_padded']:.1f}x**" in text and f"{100 * bench['padding_fraction']:.1f}% of a" in text


def test_readme_verdict_is_the_checks_on_the_committed_table():
    """The PASS / FAIL lines and the verdict the README shows are :func:`check_claims` on results/'s table."""
    from bramley.byteformer.reproduce import check_claims

    results = json.loads((README.parent / "results" / "results.json").read_text())
    claims = check_claims(results["table"])
    assert results["claims"] == claims
    text = README.read_text()
    for claim, ok in claims.items():
        assert f"{'PASS' if ok else 'FAIL'}  {claim}\n" in text, claim
    failed = [claim for claim, ok in claims.items() if not ok]
    assert f"verdict: {len(claims) - len(failed)} of {len(claims)} checks hold; fails: {', '.join(failed)}" in text


def test_compressed_check_needs_both_formats_learned_and_below_tiff():
    from bramley.byteformer.reproduce import check_claims

    def rows(png, jpeg):
        specs = {"tiff": 80.0, "tiff+permute:seed=7": 80.0, "tiff+mask:keep=0.25,seed=3": 75.0,
                 "png:level=9": png, "jpeg:quality=90": jpeg, "wav:int16": 60.0}  # fmt: skip
        chance = {"wav:int16": 16.7}
        return [{"spec": spec, "top1": top1, "chance": chance.get(spec, 10.0)} for spec, top1 in specs.items()]

    assert check_claims(rows(65.0, 60.0))["compressed_learned_but_harder"]
    assert not check_claims(rows(16.7, 14.9))["compressed_learned_but_harder"]  # near chance: not learned
    assert not check_claims(rows(65.0, 25.0))["compressed_learned_but_harder"]  # JPEG not learned
    assert not check_claims(rows(82.0, 60.0))["compressed_learned_but_harder"]  # PNG not below TIFF
