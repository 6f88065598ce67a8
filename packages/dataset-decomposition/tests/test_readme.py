"""Every command and Python block of the package README runs (sizes shrunk to toy scale, listed here).

The ``torchrun`` line runs on 2 CPU processes with FSDP2 over gloo: the recipes' distributed path.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from shared.markdown import bramley_command, run_python_blocks, shell_commands

README = Path(__file__).resolve().parents[1] / "README.md"

TINY_MODEL = ["model.name=dd_gpt_tiny", "model.kwargs.vocab_size=257", "model.kwargs.dim=16", "model.kwargs.depth=1",
              "model.kwargs.num_heads=2", "model.kwargs.max_seq_len=32"]  # fmt: skip
TINY_TRAIN = [*TINY_MODEL, "data.tokens_per_step=64", "data.seq_len=32", "data.num_cycles=1", "train.steps=2",
              "train.amp=none", "train.grad_accum_steps=1", "optim.warmup_steps=1",
              "train.checkpoint_every=0"]  # fmt: skip
SHRINK = [
    (r"--min-log2 8 --max-log2 13", "--min-log2 2 --max-log2 5"),
    (r"--max-log2 13 --min-log2 8", "--max-log2 5 --min-log2 2"),
    (r"--model dd_gpt_1b", "--model dd_gpt_tiny --dim 16 --depth 1 --num-heads 2"),
    (r"--tokens-per-step 16384", "--tokens-per-step 64"),
    (r"--steps 24", "--steps 1 --rounds 1 --warmup 0"),
    (r"--device cuda", "--device cpu"),  # no GPU in CI: the same code path on CPU
    (r"--nproc_per_node 8", "--nproc_per_node 2"),
]
EXTRA = {
    "make-buckets": ["--no-progress"],
    "train": TINY_TRAIN,
    "eval": ["--rows-per-bucket", "4"],
    "reproduce": ["--quick", "--out", "reproduce"],
}


def test_readme_python_blocks_run():
    run_python_blocks(README)


def _write_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "import", "class", "value", "None", "for", "in", "if", "(", ")", ":", "\n"]
    (root / "corpus").mkdir()
    for i in range(30):
        (root / "corpus" / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, size=int(rng.integers(3, 120)))))


def _torchrun(line: str, cwd: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    argv = shlex.split(line)[1:]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv, *TINY_TRAIN, "train.device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.filterwarnings("ignore:train.steps=.* passes over the buckets")  # 2 tiny steps
def test_readme_commands_run(tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    _write_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=SHRINK):
        if line.startswith("torchrun "):
            _torchrun(line, tmp_path)
            ran.append("torchrun")
            continue
        argv, sub = bramley_command(line)
        if "smoke" in argv:  # the smoke recipe runs as it is (seconds)
            sub = "smoke"
        argv += EXTRA.get(sub, [])
        assert bramley_main(argv) == 0, line
        ran.append(sub)
    assert {"smoke", "make-buckets", "train", "eval", "bench", "reproduce", "torchrun"} <= set(ran)
    smoke = json.loads((tmp_path / "runs" / "smoke" / "results.json").read_text())
    assert smoke["method"] == "dd" and smoke["cost"]["tokens"] == smoke["metrics"]["step"] * 2048
    for run in ("dd", "cc", "openlm_1b_dd"):
        results = json.loads((tmp_path / "runs" / run / "results.json").read_text())
        assert results["cost"]["tokens"] == 2 * 64 * (2 if run == "openlm_1b_dd" else 1)
    assert "document_masking: true" in (tmp_path / "runs" / "cc" / "recipe.yaml").read_text()
    assert json.loads((tmp_path / "runs" / "dd" / "eval.json").read_text())["loss"]["loss"] > 0
    bench = json.loads((tmp_path / "bench-8k.json").read_text())
    assert bench["device"] == "cpu" and "dd_over_cc" in bench["ratios"]
    reproduce = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert reproduce["quick"] and set(reproduce["runs"]) == {"cc", "cc_dm", "dd"}
    assert (tmp_path / "reproduce" / "dataset_decomposition.png").is_file()


def _results(name: str) -> dict:
    return json.loads((README.parent / "docs" / name).read_text())


def test_readme_table_matches_results():
    """The README's reproduction table is rebuilt from the committed results.json (not typed by hand)."""
    from bramley.dataset_decomposition.reproduce import _table

    results = _results("reproduce_results.json")
    assert not results["quick"] and results["config"]["steps"] == 150
    table = _table(results)
    assert table in README.read_text()
    assert (README.parent / "docs" / "reproduce_table.md").read_text().strip() == table


def test_readme_prose_numbers_come_from_the_results():
    """Every measured number quoted in the README's prose is the one in the committed results files."""
    text = " ".join(README.read_text().split())
    shares = []
    for name in ("reproduce_results.json", "reproduce_results_seed1.json"):
        results = _results(name)
        runs = results["runs"]
        cc, cc_dm, dd = runs["cc"], runs["cc_dm"], runs["dd"]
        attn = dd["totals"]["attention_flops"] / cc["totals"]["attention_flops"]
        time = dd["totals"]["wall_s"] / cc["totals"]["wall_s"]
        assert results["claims"]["holds"], name
        for band, dd_loss in enumerate(dd["loss_by_band"]):  # "better at every context position"
            assert dd_loss < min(cc["loss_by_band"][band], cc_dm["loss_by_band"][band]), (name, band)
        if results["seed"] == 0:
            quoted = [
                f"DD does {attn:.2f}x the attention FLOPs",
                f"trained in {time:.2f}x the wall-clock",
                f"({dd['final_val_loss']:.3f} vs {cc['final_val_loss']:.3f} nats/byte)",
                f"({dd['val_loss_at_equal_time']:.3f} vs {cc['val_loss_at_equal_time']:.3f} for the baseline at "
                f"DD's {results['equal_time_s']:.0f} s)",
                f"Total run time {results['total_s']:.0f} s",
            ]
        else:
            quoted = [
                f"DD {dd['final_val_loss']:.3f} vs {cc['final_val_loss']:.3f} (concat-and-chunk) and "
                f"{cc_dm['final_val_loss']:.3f} (with doc mask)",
                f"{time:.2f}x the time, {attn:.2f}x the attention FLOPs",
            ]
        for phrase in quoted:
            assert phrase in text, (name, phrase)
        dd_rows = sum(dd["dd_pass"]["rows_per_bucket"])  # the budget-scaled buckets (tests/test_reproduce.py)
        all_rows = sum(results["data"]["buckets"].values())
        shares.append(f"{dd_rows} of {all_rows} rows")
    assert "seed 0: {}; seed 1: {}".format(*shares) in text


@pytest.mark.parametrize("name", ["BENCHMARKS.md", "CHANGELOG.md"])
def test_docs_exist(name):
    assert (README.parent / name).is_file()


BENCHMARKS = README.parent / "BENCHMARKS.md"


def test_benchmarks_table_matches_the_raw_results():
    """Each CPU row of BENCHMARKS.md is the benchmarks/*.json its command wrote (not typed by hand)."""
    from bramley.dataset_decomposition.bench import markdown_table

    text = BENCHMARKS.read_text()
    for context in (512, 1024):
        result = json.loads((README.parent / "benchmarks" / f"cpu_context{context}.json").read_text())
        row = markdown_table(result, "", 1).splitlines()[-1]
        assert row.startswith(f"| {context} | {1 << result['min_log2']} ... {context} |") and row in text, row
        assert (
            f"**{result['ratios']['dd_over_cc']:.2f}x**" in row
            and f"**{result['ratios']['dd_over_cc_dm']:.2f}x**" in row
        )
        assert (result["steps"], result["rounds"], result["warmup"], result["tokens_per_step"]) == (6, 21, 2, 4096)
    ratios = [
        json.loads((README.parent / "benchmarks" / f"cpu_context{c}.json").read_text())["ratios"]["dd_over_cc"]
        for c in (512, 1024)
    ]
    readme = " ".join(README.read_text().split())
    assert "DD trains {:.2f}x and {:.2f}x as many tokens/s as concat-and-chunk".format(*ratios) in readme


def test_benchmarks_commands_run(tmp_path, monkeypatch):
    """The BENCHMARKS.md commands run (tiny model, one step, CPU; outputs into a temporary folder)."""
    import torch

    from bramley.core.cli import main as bramley_main

    monkeypatch.chdir(tmp_path)
    cpu_lines = (
        "4096 --steps 6 --rounds 21 --warmup 2",
        "1024 --steps 1 --rounds 1 --warmup 0",
    )  # one step, 1024 tokens
    lines = shell_commands(BENCHMARKS, rewrite=[*SHRINK, cpu_lines])
    assert len(lines) == 3
    threads = torch.get_num_threads()
    for line in lines:
        argv, _ = bramley_command(line)
        if "--model" not in argv:  # the CPU lines use the default dd_gpt_tiny: shrink it too
            argv += ["--dim", "16", "--depth", "1", "--num-heads", "2"]
        assert bramley_main(argv) == 0, line
    assert torch.get_num_threads() == threads, "the commands restore torch's thread count"
    assert (tmp_path / "benchmarks" / "cpu_context1024.json").is_file() and (tmp_path / "bench-8k.json").is_file()
