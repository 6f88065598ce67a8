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


@pytest.mark.filterwarnings("ignore:train.steps=.* passes over the buckets")  # 2 tiny steps
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


def test_eval_rejects_a_checkpoint_without_config(tmp_path, capsys):
    import torch

    from bramley.core.checkpoint import save_checkpoint

    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--buckets", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--buckets", str(tmp_path)])
    err = capsys.readouterr().err
    assert "carries no model config" in err and "missing.safetensors does not exist" in err


@pytest.fixture
def buckets_dir(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(4):
        (tmp_path / "docs" / f"{i}.txt").write_text("x = 1\n" * (3 + 10 * i))
    assert main(["make-buckets", str(tmp_path / "docs"), "--out", str(tmp_path / "b"), "--min-log2", "2",
                 "--max-log2", "3", "--no-progress"]) == 0  # fmt: skip
    return tmp_path / "b"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.buckets=nowhere"], "nowhere/manifest.json not found"),
        (["data.curriculum=grow"], "unknown curriculum 'grow'"),
        (["data.tokens_per_step=6"], "tokens_per_step=6 must be a multiple of every bucket length"),
        (["data.num_cycles=0"], "num_cycles must be an int >= 1"),
        (["data.tokens_per_step=4096"], "no bucket has enough rows"),
        (["data.val_buckets=nowhere"], "data.val_buckets: nowhere/manifest.json not found"),
        (["model.name=dd_gpt_huge"], "unknown model 'dd_gpt_huge'"),
        (["model.dim=10", "model.num_heads=4"], "even integer head size"),
        (["data.method=concat_chunk"], "needs data.documents=PATH"),
        (["data.method=concat_chunk", "data.documents=nowhere", "data.seq_len=8"], "nowhere does not exist"),
        (
            ["data.method=concat_chunk", "data.documents=x.txt", "data.seq_len=8", "data.tokens_per_step=16"],
            "do not fill one row",
        ),
        (["model.dimm=3"], "unknown config key 'model.dimm'"),
        (["model.vocab_size=100"], "token ids up to 256 but model.vocab_size=100"),
        (["model.max_seq_len=4"], "sequences of 8 tokens but model.max_seq_len=4"),
        (
            ["data.method=concat_chunk", "data.documents=x.txt", "data.seq_len=2", "model.vocab_size=100"],
            "token ids up to 256 but model.vocab_size=100",
        ),
    ],
)
def test_train_errors_are_clean(buckets_dir, tmp_path, monkeypatch, capsys, overrides, message):
    """Bad train settings stop with one line naming the problem (exit 2, no traceback), before any training."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("abc")
    tiny = ["model.dim=16", "model.depth=1", "model.num_heads=2", "model.max_seq_len=8", "data.tokens_per_step=8"]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), f"data.buckets={buckets_dir}", *tiny, *overrides])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_concat_chunk_reads_documents_as_make_buckets_does(tmp_path):
    """The baseline reads a jsonl corpus's text field (not the raw JSON lines), like make-buckets."""
    import copy

    from bramley.dataset_decomposition.cli import TRAIN_DEFAULTS, build_training

    texts = ["first document " * 5, "second one, ü " * 7]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = copy.deepcopy(TRAIN_DEFAULTS)
    config["train"] = {"seed": 0}
    config["data"].update(method="concat_chunk", documents=str(tmp_path / "c.jsonl"), seq_len=8, tokens_per_step=16)
    dataset, sampler, tokens_per_step = build_training(config)
    assert sampler is None and tokens_per_step == 16
    assert dataset.account.documents == 2
    assert dataset.account.tokens == sum(len(t.encode()) + 1 for t in texts)


def test_cycle_coverage_note():
    """train.steps that end inside a pass over the buckets cut the curriculum's last cycles: the user is told."""
    from bramley.core.train import TrainConfig
    from bramley.dataset_decomposition.cli import cycle_coverage_note

    assert cycle_coverage_note(100, 8, TrainConfig(steps=200)) is None  # two whole passes
    assert cycle_coverage_note(100, 8, TrainConfig(steps=50, grad_accum_steps=4)) is None
    assert cycle_coverage_note(100, 8, TrainConfig(epochs=1)) is None
    note = cycle_coverage_note(100, 8, TrainConfig(steps=83))
    assert "0.830 passes" in note and "cycle 7 of 8" in note and "train.steps=100" in note


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens-per-step", "100"], "must be a multiple of the max length 512"),
        (["--steps", "0"], "--steps: must be >= 1, got 0"),
        (["--model", "dd_gpt_huge"], "unknown model 'dd_gpt_huge'"),
        (["--min-log2", "6", "--max-log2", "5"], "need 0 <= min_log2 <= max_log2"),
        (["--threads", "0"], "--threads: must be >= 1, got 0"),
    ],
)
def test_bench_errors_are_clean(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--dim", "16", "--depth", "1", "--num-heads", "2", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
