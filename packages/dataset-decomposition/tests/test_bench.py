"""The bench code path at a tiny size (no timed assertions: only that it measures what it says)."""

import pytest
import torch

from bramley.dataset_decomposition.bench import make_batches, run_benchmark
from bramley.dataset_decomposition.cli import main
from bramley.dataset_decomposition.train import batch_sequence_lengths


def test_batches_hold_equal_tokens():
    for method in ("cc", "cc_dm", "dd"):
        batches = make_batches(method, min_log2=2, max_log2=5, tokens_per_step=64, steps=8, vocab_size=257)
        assert len(batches) == 8
        for b in batches:
            assert int(batch_sequence_lengths(b).sum()) == 64
    dd = make_batches("dd", min_log2=2, max_log2=5, tokens_per_step=64, steps=8, vocab_size=257)
    assert sorted({b.shape[1] - 1 for b in dd}) == [4, 8, 16, 32]  # every bucket, twice
    with pytest.raises(ValueError, match="multiple"):
        make_batches("cc", min_log2=2, max_log2=5, tokens_per_step=40, steps=1, vocab_size=257)


def test_run_benchmark_tiny():
    result = run_benchmark(model_kwargs={"dim": 16, "depth": 1, "num_heads": 2}, min_log2=2, max_log2=4,
                           tokens_per_step=32, steps=2, rounds=3, warmup=1, device="cpu")  # fmt: skip
    assert set(result["methods"]) == {"cc", "cc_dm", "dd"} and set(result["ratios"]) == {"dd_over_cc", "dd_over_cc_dm"}
    methods = result["methods"]
    assert methods["dd"]["attention_flops_per_step"] < methods["cc"]["attention_flops_per_step"]
    for m in methods.values():
        assert m["tokens_per_s"] > 0 and m["s_per_step"] > 0 and len(m["round_seconds"]) == 3
    for name, ratio in result["ratios"].items():  # interleaved rounds: the median of per-round ratios, with spread
        spread = result["ratio_spread"][name]
        assert len(spread["rounds"]) == 3 and ratio == sorted(spread["rounds"])[1]
        assert spread["range"][0] <= spread["iqr"][0] <= ratio <= spread["iqr"][1] <= spread["range"][1]
    with pytest.raises(ValueError, match="unknown methods"):
        run_benchmark(methods=("xx",))
    with pytest.raises(ValueError, match="rounds >= 1"):
        run_benchmark(rounds=0)


def test_timed_dd_steps_cover_every_bucket_once_per_cycle():
    """The warm-up steps do not shift dd's timed steps off the bucket cycle: 3 steps over 3 buckets time each once."""
    from bramley.dataset_decomposition.train import attention_flops

    shape = {"min_log2": 2, "max_log2": 4, "tokens_per_step": 32}
    result = run_benchmark(model_kwargs={"dim": 16, "depth": 1, "num_heads": 2}, **shape, steps=3, rounds=1, warmup=2,
                           methods=("dd",), device="cpu")  # fmt: skip
    per_bucket = [attention_flops(batch_sequence_lengths(b), 16, 1) for b in make_batches("dd", **shape, steps=3,
                                                                                        vocab_size=257)]  # fmt: skip
    assert len(set(per_bucket)) == 3
    assert result["methods"]["dd"]["attention_flops_per_step"] == pytest.approx(sum(per_bucket) / 3)


def test_bench_cli(tmp_path):
    out, markdown = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    markdown.write_text(
        "prose before\n\n<!-- bench_dd:cpu-context16:start -->\nold\n<!-- bench_dd:cpu-context16:end -->\n"
    )
    threads = torch.get_num_threads()
    argv = ["bench", "--dim", "16", "--depth", "1", "--num-heads", "2", "--min-log2", "2", "--max-log2", "4",
            "--tokens-per-step", "32", "--steps", "1", "--rounds", "2", "--warmup", "0", "--threads", "1",
            "--device", "cpu", "--out", out, "--markdown", markdown]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert torch.get_num_threads() == threads, "the command restores torch's thread count"
    assert out.is_file()
    text = markdown.read_text()  # the table replaced the old block, names the command that made it and the versions
    assert text.startswith("prose before") and "old" not in text and "| 16 | 4 ... 16 |" in text
    assert "`bramley dataset-decomposition bench --dim 16" in text and f"torch {torch.__version__}" in text
