"""The command line: help, info, bad input as one line with exit status 2."""

import json

import pytest
import torch

from bramley.mobileclip.cli import main


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bramley-mobileclip" in out
    for verb in ("info", "reparam", "convert", "reinforce", "train", "eval", "export", "bench", "reproduce"):
        assert verb in out


def test_info_lists_the_four_models(capsys):
    assert main(["info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["mobileclip_b", "mobileclip_s0", "mobileclip_s1", "mobileclip_s2"]
    s0 = next(r for r in rows if r["model"] == "mobileclip_s0")
    assert s0["fused_params_M"] < s0["params_M"]


def test_convert_refuses_a_foreign_checkpoint(tmp_path, capsys):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    assert main(["convert", str(tmp_path / "other.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a MobileCLIP checkpoint" in err and len(err.splitlines()) == 1


def test_reinforce_needs_a_readable_teacher(tmp_path, capsys):
    code = main(["reinforce", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "shards")])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
