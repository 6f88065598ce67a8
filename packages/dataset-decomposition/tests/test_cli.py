"""The CLI: every verb's success path, and every user mistake as one line on stderr with exit status 2."""

import json

import pytest
import torch

from bramley.dataset_decomposition.buckets import Buckets
from bramley.dataset_decomposition.cli import main
from shared.cli_testing import CLI

cli = CLI(main, "bramley-dataset-decomposition")
TINY = ["model.name=dd_gpt_tiny", "model.kwargs.dim=16", "model.kwargs.depth=1", "model.kwargs.num_heads=2",
        "model.kwargs.max_seq_len=8", "data.tokens_per_step=8"]  # fmt: skip


def test_help_lists_subcommands(capsys):
    out = cli.help(capsys)
    assert f"usage: {cli.prog}" in out
    for sub in ("make-buckets", "train", "eval", "bench", "info", "reproduce"):
        assert sub in out


def test_info_lists_the_models(capsys):
    assert main(["info", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"dd_gpt_tiny", "dd_gpt_410m", "dd_gpt_1b"}
    assert rows["dd_gpt_1b"]["dim"] == 2048 and rows["dd_gpt_1b"]["context"] == 8192
    cli.user_error(capsys, ["info", "dd_gpt_2b"], "unknown dataset-decomposition model 'dd_gpt_2b'")


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(4):
        (tmp_path / "docs" / f"{i}.txt").write_text("print('hello world')\n" * (5 + 20 * i))
    return tmp_path / "docs"


@pytest.mark.filterwarnings("ignore:train.steps=.* passes over the buckets")  # 2 tiny steps
def test_make_buckets_train_eval(docs, tmp_path, capsys):
    buckets_dir = tmp_path / "buckets"
    assert main(["make-buckets", str(docs), "--out", str(buckets_dir), "--min-log2", "2", "--max-log2", "5",
                 "--no-progress"]) == 0  # fmt: skip
    assert "| bucket |" in capsys.readouterr().out
    buckets = Buckets(buckets_dir)
    assert buckets.lengths == [4, 8, 16, 32] and sum(buckets.rows_per_bucket) > 0
    run = tmp_path / "run"
    overrides = ["model.name=dd_gpt_tiny", "model.kwargs.dim=16", "model.kwargs.depth=1", "model.kwargs.num_heads=2",
                 "model.kwargs.max_seq_len=32", "data.tokens_per_step=32", "data.num_cycles=1", "train.steps=2",
                 "optim.warmup_steps=1"]  # fmt: skip
    assert main(["train", "--out", str(run), f"data.buckets={buckets_dir}", *overrides]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "dd" and results["cost"]["tokens"] == 2 * 32 and results["metrics"]["step"] == 2
    assert "buckets: " + str(buckets_dir) in (run / "recipe.yaml").read_text()
    capsys.readouterr()
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "model.safetensors"), "--buckets", str(buckets_dir),
                 "--rows-per-bucket", "4", "--out", str(result), "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads(result.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert set(report["loss_by_bucket_length"]) == {"4", "8", "16", "32"} and report["loss"]["loss"] > 0
    # the overall loss is the token-weighted mean of the buckets' losses
    rows = [min(4, r) for r in buckets.rows_per_bucket]
    weights = [r * n for r, n in zip(rows, buckets.lengths)]
    expected = sum(w * report["loss_by_bucket_length"][str(n)] for w, n in zip(weights, buckets.lengths)) / sum(weights)
    assert report["loss"]["tokens"] == sum(weights) and report["loss"]["loss"] == pytest.approx(expected)


def test_make_buckets_errors(docs, tmp_path, capsys):
    out = tmp_path / "b"
    cli.user_error(capsys, ["make-buckets", tmp_path / "missing", "--out", out], "missing does not exist")
    cli.user_error(
        capsys,
        ["make-buckets", docs, "--out", out, "--min-log2", "6", "--max-log2", "5"],
        "need 0 <= min_log2 <= max_log2",
    )
    cli.user_error(capsys, ["make-buckets", docs, "--out", out, "--encoding", "utf-9"], "unknown text encoding 'utf-9'")
    (tmp_path / "file").write_text("")
    cli.user_error(capsys, ["make-buckets", docs, "--out", tmp_path / "file"], "is a file, not a folder")
    argv = ["make-buckets", docs, "--out", out, "--min-log2", "2", "--max-log2", "5", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    cli.user_error(capsys, argv, "pass --overwrite")
    cli.user_error(capsys, [*argv, "--tokenizer", "nowhere.json"], "tokenizer nowhere.json does not exist")


def test_make_buckets_without_decodable_text_is_an_error(tmp_path, capsys):
    """A corpus with no decodable text gave exit 0 and empty buckets; it is one error line, and no folder is left."""
    (tmp_path / "latin1").mkdir()
    for i in range(3):
        (tmp_path / "latin1" / f"{i}.txt").write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 40)
    out = tmp_path / "buckets"
    argv = ["make-buckets", tmp_path / "latin1", "--out", out, "--no-progress"]
    message = cli.user_error(capsys, argv, "no decodable text in the 3 input file(s): 3 file(s) are not valid utf-8")
    assert "--encoding" in message and not out.exists()
    argv = ["make-buckets", tmp_path / "latin1", "--out", out, "--no-progress", "--encoding", "latin-1"]
    assert main([str(a) for a in [*argv, "--min-log2", "2", "--max-log2", "4"]]) == 0  # the hint works
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "a.txt").write_text("tiny")
    argv = ["make-buckets", tmp_path / "short", "--out", tmp_path / "s", "--no-progress"]
    message = cli.user_error(capsys, argv, "the 1 document(s) of the 1 input file(s) (5 tokens) are all too short")
    assert "(257 tokens a row): lower min_log2" in message


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
        (["data.buckets=nowhere"], "data (dd): nowhere/manifest.json not found"),
        (["data.curriculum=grow"], "config key 'data.curriculum' must be one of 'natural' | 'uniform' | 'grow_p2'"),
        (["data.tokens_per_step=6"], "tokens_per_step=6 must be a multiple of every bucket length"),
        (["data.tokens_per_step=0"], "data.tokens_per_step must be >= 1, got 0"),
        (["data.num_cycles=-1"], "data.num_cycles must be >= 1, got -1"),
        (["data.tokens_per_step=4096"], "no bucket has enough rows"),
        (["data.val_buckets=nowhere"], "data.val_buckets: nowhere/manifest.json not found"),
        (["data.method=cc"], "config key 'data.method' must be one of 'dd' | 'concat_chunk', got 'cc'"),
        (["model.name=dd_gpt_huge"], "unknown model 'dd_gpt_huge'"),
        (["model.kwargs.dim=10", "model.kwargs.num_heads=4"], "even integer head size"),
        (["model.kwargs.dim=abc"], "dd_gpt_tiny(dim='abc'"),
        (["model.kwargs.dimm=3"], "dimm"),
        (["model.dim=3"], "unknown config key 'model.dim' (model has: name, kwargs)"),
        (["data.method=concat_chunk", "data.buckets=null"], "needs data.documents=PATH"),
        (["data.method=concat_chunk", "data.documents=nowhere", "data.seq_len=8"], "nowhere does not exist"),
        (
            ["data.method=concat_chunk", "data.documents=x.txt", "data.seq_len=8", "data.tokens_per_step=16"],
            "do not fill one row",
        ),
        (["data.documents=x.txt"], "data.method=dd takes data.buckets or documents to decompose, not both"),
        (["data.source=python_stdlib", "data.documents=x.txt"], "data.documents and data.source=python_stdlib both"),
        (["data.buckets=null", "data.documents=x.txt", "data.seq_len=12"], "data.seq_len=12 is the longest bucket"),
        (["model.kwargs.vocab_size=100"], "holds token ids up to 256 but the model's vocab_size is 100"),
        (["model.kwargs.max_seq_len=4"], "has sequences of 8 tokens but the model's max_seq_len is 4"),
        (
            ["data.method=concat_chunk", "data.documents=x.txt", "data.seq_len=2", "model.kwargs.vocab_size=100"],
            "token ids up to 256 but the model's vocab_size is 100",
        ),
        (["optim.lr=-1"], "optim.lr must be >= 0"),
        (["train.steps=0"], "train.steps must be >= 1, got 0"),
        (["loss.z_loss=-1"], "loss.z_loss must be >= 0, got -1.0"),
        (["data.max_documents=0"], "data.max_documents must be >= 1, got 0"),
    ],
)
def test_train_errors_are_clean(buckets_dir, tmp_path, monkeypatch, capsys, overrides, message):
    """Bad train settings stop with one line naming the problem (exit 2, no traceback), before any training."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("abc")
    argv = ["train", "--out", tmp_path / "run", f"data.buckets={buckets_dir}", *TINY, *overrides]
    cli.user_error(capsys, argv, message)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.momentum=.nan", "config key 'optim.momentum' must be a finite number, got nan"),
        ("optim.momentum=nan", "config key 'optim.momentum' must be float, got str 'nan'"),
        ("optim.lr=.inf", "config key 'optim.lr' must be a finite number, got inf"),
        ("optim.betas=[0.9, .nan]", "config key 'optim.betas[1]' must be a finite number, got nan"),
        ("train.momentum=.nan", "unknown config key 'train.momentum'"),
    ],
)
def test_train_refuses_non_finite_settings(buckets_dir, tmp_path, capsys, override, message):
    """Issue 23: `train.momentum=.nan` trained to all-NaN weights and exited 0; the typed recipe refuses it."""
    argv = ["train", "--out", tmp_path / "run", f"data.buckets={buckets_dir}", *TINY, override]
    cli.user_error(capsys, argv, message)
    assert not (tmp_path / "run").exists()


def test_train_output_and_device_errors(buckets_dir, tmp_path, capsys):
    base = ["train", f"data.buckets={buckets_dir}", *TINY]
    (tmp_path / "file").write_text("")
    cli.user_error(capsys, [*base, "--out", tmp_path / "file" / "run"], "cannot write")
    if not torch.cuda.is_available():
        cli.user_error(capsys, [*base, "--out", tmp_path / "run", "train.device=cuda"], "cuda")
    cli.user_error(
        capsys,
        ["train", "--recipe", "nope", "--out", tmp_path / "run"],
        "unknown recipe 'nope'; bundled recipes: openlm_1b_baseline",
    )
    cli.user_error(capsys, ["train", "--out", tmp_path / "run"], "data.method=dd needs data.buckets=DIR")
    no_model = ["train", "--out", tmp_path / "run", f"data.buckets={buckets_dir}", "data.tokens_per_step=8"]
    cli.user_error(capsys, no_model, "model.name is not set")


@pytest.mark.filterwarnings("ignore:train.steps=.* passes over the buckets")
def test_eval_errors_are_clean(buckets_dir, tmp_path, capsys, monkeypatch):
    from bramley.core.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), f"data.buckets={buckets_dir}", *TINY, "train.steps=1"]) == 0
    capsys.readouterr()
    model = run / "model.safetensors"
    base = ["eval", "--buckets", buckets_dir]
    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    cli.user_error(capsys, [*base, "--checkpoint", tmp_path / "w.safetensors"], "carries no bramley model config")
    cli.user_error(
        capsys, [*base, "--checkpoint", tmp_path / "missing.safetensors"], "missing.safetensors does not exist"
    )
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    cli.user_error(capsys, [*base, "--checkpoint", tmp_path / "corrupt.safetensors"], "not a readable safetensors file")
    # a model this process does not know (whether or not other method packages were imported before)
    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "foreign.safetensors", config={"name": "no_such_model_x"})
    cli.user_error(capsys, [*base, "--checkpoint", tmp_path / "foreign.safetensors"], "unknown model 'no_such_model_x'")
    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "other.safetensors", config={"name": "dd_gpt_tiny"})
    cli.user_error(capsys, [*base, "--checkpoint", tmp_path / "other.safetensors"], "does not match DDGPT")
    cli.usage_error(
        capsys, [*base, "--checkpoint", model, "--rows-per-bucket", "0"], "--rows-per-bucket: must be >= 1, got 0"
    )
    cli.user_error(
        capsys, ["eval", "--checkpoint", model, "--buckets", tmp_path / "nowhere"], "nowhere/manifest.json not found"
    )
    if not torch.cuda.is_available():
        cli.user_error(capsys, [*base, "--checkpoint", model, "--device", "cuda"], "cuda")
    # a registered model of another method is refused by name, not run on tokens
    import bramley.core.checkpoint as checkpoint

    foreign = torch.nn.Linear(2, 2)
    foreign.model_config = {"name": "mobileone_s0", "kwargs": {}}
    monkeypatch.setattr(checkpoint, "load_model", lambda spec, device="cpu": foreign)
    cli.user_error(
        capsys, [*base, "--checkpoint", model], "holds mobileone_s0, not a Dataset Decomposition language model"
    )


def test_eval_refuses_buckets_beyond_the_model(buckets_dir, tmp_path, capsys):
    from bramley.core.checkpoint import save_checkpoint
    from bramley.core.registry import create_model

    small = create_model("dd_gpt_tiny", vocab_size=100, dim=16, depth=1, num_heads=2, max_seq_len=8)
    save_checkpoint(small, tmp_path / "small.safetensors")
    argv = ["eval", "--checkpoint", tmp_path / "small.safetensors", "--buckets", buckets_dir]
    message = cli.user_error(capsys, argv, "token ids up to 256 but the model's vocab_size is 100")
    assert "--buckets" in message


def test_concat_chunk_reads_documents_as_make_buckets_does(tmp_path):
    """The baseline reads a jsonl corpus's text field (not the raw JSON lines), like make-buckets."""
    from bramley.dataset_decomposition.recipe import DDData, build_training

    texts = ["first document " * 5, "second one, ü " * 7]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = DDData(method="concat_chunk", documents=str(tmp_path / "c.jsonl"), seq_len=8, tokens_per_step=16)
    dataset, sampler = build_training(data)
    assert sampler is None
    assert dataset.account.documents == 2
    assert dataset.account.tokens == sum(len(t.encode()) + 1 for t in texts)
    one = build_training(DDData(method="concat_chunk", documents=str(tmp_path / "c.jsonl"), seq_len=8,
                                tokens_per_step=16, max_documents=1))[0]  # fmt: skip
    assert one.account.documents == 1


def test_dd_decomposes_documents_into_the_run_folder(tmp_path):
    """dd without buckets: the documents become <out>/buckets; a rerun rebuilds them, a user's folder is not touched."""
    from bramley.core.errors import ConfigError
    from bramley.dataset_decomposition.recipe import DDData, build_training

    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_text("def f(x):\n    return x\n" * (4 + 9 * i))
    data = DDData(documents=str(tmp_path / "docs"), min_log2=2, seq_len=16, tokens_per_step=16, num_cycles=1)
    _, sampler = build_training(data, seed=0, out_dir=tmp_path / "run")
    first = Buckets(tmp_path / "run" / "buckets")
    assert first.lengths == [4, 8, 16] and first.manifest["stats"]["documents"] == 3 and len(sampler) > 0
    build_training(data, seed=0, out_dir=tmp_path / "run")  # a resumed run: the same rows again
    assert [f.read_bytes() for f in Buckets(tmp_path / "run" / "buckets").files] == [
        f.read_bytes() for f in first.files
    ]
    assert main(["make-buckets", str(tmp_path / "docs"), "--out", str(tmp_path / "mine" / "buckets"), "--min-log2",
                 "2", "--max-log2", "4", "--no-progress"]) == 0  # fmt: skip
    with pytest.raises(ConfigError, match="holds buckets that train did not write"):
        build_training(data, seed=0, out_dir=tmp_path / "mine")
    assert Buckets(tmp_path / "mine" / "buckets").manifest["stats"]["documents"] == 3


def test_cycle_coverage_note():
    """train.steps that end inside a pass over the buckets cut the curriculum's last cycles: the user is told."""
    from bramley.core.train import TrainConfig
    from bramley.dataset_decomposition.recipe import cycle_coverage_note

    assert cycle_coverage_note(100, 8, TrainConfig(steps=200)) is None  # two whole passes
    assert cycle_coverage_note(100, 8, TrainConfig(steps=50, grad_accum_steps=4)) is None
    assert cycle_coverage_note(100, 8, TrainConfig(epochs=1)) is None
    note = cycle_coverage_note(100, 8, TrainConfig(steps=83))
    assert "0.830 passes" in note and "cycle 7 of 8" in note and "train.steps=100" in note


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens-per-step", "100"], "must be a multiple of the max length 512"),
        (["--tokens-per-step", "0"], "--tokens-per-step: must be >= 1, got 0"),
        (["--steps", "0"], "--steps: must be >= 1, got 0"),
        (["--warmup", "-1"], "warmup >= 0"),
        (["--dim", "-3"], "--dim: must be >= 1, got -3"),
        (["--model", "dd_gpt_huge"], "unknown model 'dd_gpt_huge'"),
        (["--min-log2", "6", "--max-log2", "5"], "need 0 <= min_log2 <= max_log2"),
        (["--threads", "0"], "--threads: must be >= 1, got 0"),
        (["--dim", "10", "--num-heads", "4"], "even integer head size"),
    ],
)
def test_bench_errors_are_clean(capsys, args, message):
    argv = ["bench", "--dim", "16", "--depth", "1", "--num-heads", "2", "--device", "cpu", *args]
    if args[-1] in ("0", "-3"):  # refused by argparse (positive_int)
        cli.usage_error(capsys, argv, message)
    else:
        cli.user_error(capsys, argv, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_bench_without_cuda_is_clean(capsys):
    cli.user_error(capsys, ["bench", "--dim", "16", "--depth", "1", "--num-heads", "2", "--device", "cuda"], "cuda")
