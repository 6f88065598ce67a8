"""The command line: help, extract (spec and budget), eval, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from bramley.core.checkpoint import load_model, save_pretrained
from bramley.core.registry import create_model
from bramley.matformer import extract, num_parameters
from bramley.matformer.cli import main

LM = dict(dim=16, depth=2, num_heads=2, mlp_hidden=32, max_seq_len=16)


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bramley-matformer" in out
    assert all(verb in out for verb in ("train", "extract", "eval", "bench", "reproduce"))


@pytest.fixture
def nested_lm(tmp_path):
    torch.manual_seed(0)
    model = create_model("matlm", **LM)
    save_pretrained(model, tmp_path / "nested")
    return model, tmp_path / "nested"


def test_extract_a_mix_n_match_spec_and_a_budget(nested_lm, tmp_path, capsys):
    model, folder = nested_lm
    assert main(["extract", "--checkpoint", str(folder), "--ffn", "4,16", "--out", str(tmp_path / "a")]) == 0
    sub = load_model(tmp_path / "a")
    assert sub.mlp_hidden == (4, 16) and not sub.nested
    tokens = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        assert torch.equal(sub(tokens), extract(model, [4, 16]).eval()(tokens))
    budget = num_parameters(model, [8, 16])
    assert main(["extract", "--checkpoint", str(folder), "--budget", str(budget), "--out", str(tmp_path / "b")]) == 0
    assert load_model(tmp_path / "b").mlp_hidden == (8, 16)
    assert "max difference to the sliced forward 0.00e+00" in capsys.readouterr().out


def test_eval_every_granularity_and_one_sub_model_on_text(nested_lm, tmp_path, capsys):
    _, folder = nested_lm
    (tmp_path / "text.txt").write_text("def f(x):\n    return x + 1\n" * 20)
    assert main(["eval", "--checkpoint", str(folder), "--data", str(tmp_path / "text.txt"), "--seq-len", "16"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert set(metrics) == {f"{k}_h{s}" for k in ("loss", "ppl") for s in (4, 8, 16, 32)}
    args = ["eval", "--checkpoint", str(folder), "--data", str(tmp_path / "text.txt"), "--seq-len", "16", "--ffn", "8"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)["metrics"]
    assert one["loss"] == pytest.approx(metrics["loss_h8"], rel=1e-5) and one["ffn"] == [8, 8]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ffn", "4,4,4"], "one FFN size per layer: matlm has 2 layers, the spec has 3"),
        (["--ffn", "64"], "outside 1 .. 32"),
        (["--budget", "10"], "below the smallest sub-model"),
        ([], "give the sub-model as --ffn SIZES or as --budget N"),
    ],
)
def test_bad_extract_requests_are_one_line_errors(nested_lm, tmp_path, capsys, argv, message):
    _, folder = nested_lm
    assert main(["extract", "--checkpoint", str(folder), *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bramley-matformer: error:") and message in err and "\n" not in err


def test_extracting_from_an_extracted_model_names_it(nested_lm, tmp_path, capsys):
    model, _ = nested_lm
    save_pretrained(extract(model, 8), tmp_path / "small")
    assert main(["extract", "--checkpoint", str(tmp_path / "small"), "--ffn", "4", "--out", str(tmp_path / "x")]) == 2
    assert "matlm is not nested" in capsys.readouterr().err


def test_granularities_that_do_not_divide_are_a_one_line_train_error(tmp_path, capsys):
    argv = ["train", "--recipe", "smoke", "--out", str(tmp_path / "run"), "model.kwargs.mlp_hidden=100"]
    assert main(argv) == 2
    assert "granularities [8, 4, 2, 1] do not divide the FFN hidden size 100" in capsys.readouterr().err
