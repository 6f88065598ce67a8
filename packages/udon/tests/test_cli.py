"""The command line: help, eval's bad input, bench (train / embed / eval on a UnED folder run in test_readme.py)."""

from __future__ import annotations

import json

import pytest

from bramley.udon.cli import main


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: bramley-udon" in capsys.readouterr().out


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
