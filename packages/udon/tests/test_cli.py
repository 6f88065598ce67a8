"""The command line on a UnED-layout folder: train, embed (official descriptor JSON), eval, bench, bad input."""

from __future__ import annotations

import json

import pytest

from bramley.udon.cli import main

TRAIN = [
    "model.kwargs={backbone: convnet, backbone_kwargs: {widths: [4, 8]}, teacher_dim: 16, student_dim: 8}",
    "data.image_size=16",
    "data.update_every=2",
    "train.epochs=1",
    "train.batch_size=6",
    "train.progress=false",
]


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: bramley-udon" in capsys.readouterr().out


def test_train_embed_eval_on_a_uned_folder(uned_root, tmp_path, capsys):
    run = tmp_path / "run"
    data = [f"data.root={uned_root}", "data.source=uned", "data.domains=[cars, inshop]"]
    assert main(["train", "--recipe", "smoke", "--out", str(run), *data, *TRAIN]) == 0
    common = ["--uned", str(uned_root), "--domains", "cars,inshop", "--image-size", "16", "--split", "test"]
    descriptors = tmp_path / "descriptors.json"
    assert main(["embed", "--checkpoint", str(run), *common, "--out", str(descriptors)]) == 0
    payload = json.loads(descriptors.read_text())
    assert sorted(payload["inshop"]) == ["index", "test"] and len(payload["cars"]["test"]) == 9
    assert len(payload["cars"]["test"][0]) == 8, "the universal (student) descriptors"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), *common, "--out", str(tmp_path / "a.json")]) == 0
    table = capsys.readouterr().out
    assert "| domain" in table and "mean" in table
    assert main(["eval", "--descriptors", str(descriptors), *common, "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["separate"]["cars"] == pytest.approx(b["separate"]["cars"], abs=1e-6)
    assert a["merged"]["inshop"]["queries"] == 6 and a["separate"]["cars"]["queries"] == 9


def test_eval_bad_input(uned_root, tmp_path, capsys):
    descriptors = tmp_path / "d.json"
    descriptors.write_text(json.dumps({"cars": {"test": [[1.0, 0.0]] * 8}}))
    common = ["--uned", str(uned_root), "--domains", "cars", "--split", "test"]
    assert main(["eval", "--descriptors", str(descriptors), *common]) == 2
    assert "8 descriptors for 9 info-file entries" in capsys.readouterr().err
    assert main(["eval", "--descriptors", str(descriptors), "--checkpoint", "x", *common]) == 2
    assert main(["eval", "--descriptors", str(tmp_path / "missing.json"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--batch-size", "4", "--image-size", "8", "--steps", "1", "--rounds", "2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["ratio_median"] > 0 and result["rounds"] == 2 and "ratio" in capsys.readouterr().out
