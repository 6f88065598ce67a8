"""The CLI: subcommands listed, make-buckets wired to the data code, eval on buckets, clean errors."""

import json

import pytest

from bramley.dataset_decomposition.buckets import Buckets
from bramley.dataset_decomposition.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bramley-dataset-decomposition" in out
    for sub in ("make-buckets", "train", "eval", "bench", "reproduce"):
        assert sub in out


def test_make_buckets_train_eval(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(4):
        (tmp_path / "docs" / f"{i}.txt").write_text("print('hello world')\n" * (5 + 20 * i))
    buckets_dir = tmp_path / "buckets"
    assert main(["make-buckets", str(tmp_path / "docs"), "--out", str(buckets_dir), "--min-log2", "2",
                 "--max-log2", "5", "--no-progress"]) == 0  # fmt: skip
    assert "| bucket |" in capsys.readouterr().out
    buckets = Buckets(buckets_dir)
    assert buckets.lengths == [4, 8, 16, 32] and sum(buckets.rows_per_bucket) > 0
    run = tmp_path / "run"
    overrides = ["model.dim=16", "model.depth=1", "model.num_heads=2", "model.max_seq_len=32",
                 "data.tokens_per_step=32", "data.num_cycles=1", "train.steps=2", "train.warmup_steps=1"]  # fmt: skip
    assert main(["train", "--out", str(run), f"data.buckets={buckets_dir}", *overrides]) == 0
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "model.safetensors"), "--buckets", str(buckets_dir),
                 "--rows-per-bucket", "4", "--out", str(result)]) == 0  # fmt: skip
    report = json.loads(result.read_text())
    assert set(report["loss_by_bucket_length"]) == {"4", "8", "16", "32"} and report["loss"]["loss"] > 0


def test_make_buckets_error_is_clean(tmp_path, capsys):
    assert main(["make-buckets", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "make-buckets: error" in capsys.readouterr().err


def test_eval_rejects_a_checkpoint_without_config(tmp_path):
    import torch

    from bramley.core.checkpoint import save_checkpoint

    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="model config"):
        main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--buckets", str(tmp_path)])
