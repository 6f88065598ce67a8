"""Every command and Python block of the README runs (heavy arguments shrunk to toy scale, listed here), and the
README's reproduction table is the committed run's."""

import json
import shutil
from pathlib import Path

from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results" / "reproduce"
SAMPLE = Path(__file__).parent / "data" / "sample_graphs.jsonl"

SHRINK = [
    (r"--graphs 200000", "--graphs 40 --rounds 1 --sia-graphs 4"),
    (r"--num-scenes 300", "--num-scenes 8"),
]
EXTRA = {"reproduce": ["--quick", "--out", "reproduce"]}


def test_readme_python_and_commands_run(tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    shutil.copy(SAMPLE, tmp_path / "graphs.jsonl")
    monkeypatch.chdir(tmp_path)
    run_python_blocks(README)
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=SHRINK):
        argv, sub = bramley_command(line)
        assert bramley_main(argv + EXTRA.get(sub, [])) == 0, line
        ran.append(sub)
    assert {"stats", "validate", "convert", "view", "train", "eval", "reproduce", "bench"} <= set(ran)
    assert json.loads((tmp_path / "stats.json").read_text())["graphs"] == 3
    assert (tmp_path / "graphs.parquet").is_file() and (tmp_path / "runs" / "gbc-smoke" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "bench.json").read_text())["streaming"]["graphs"] == 40


def test_readme_table_is_the_committed_run():
    table = (RESULTS / "table.md").read_text().strip()
    text = README.read_text()
    block = text.split("<!-- reproduce:start -->", 1)[1].split("<!-- reproduce:end -->", 1)[0]
    assert table.split("\n", 2)[2] in block  # the table rows, as measured
    results = json.loads((RESULTS / "results.json").read_text())
    assert not results["quick"] and results["steps"] == 400 and results["per_seed"]


def test_readme_bench_numbers_are_the_committed_run():
    bench = json.loads((PACKAGE / "results" / "bench-cpu.json").read_text())
    streaming = bench["streaming"]
    block = README.read_text().split("<!-- bench:start -->", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert f"--graphs {streaming['graphs']} --rounds {streaming['rounds']}" in block
    for side in ("ours_jsonl", "ours_jsonl_no_validate", "ours_parquet", "ours_parquet_no_validate"):
        low, high = streaming["ratio_to_peer_range"][side]
        assert f"{streaming['ratio_to_peer_median'][side]:.2f}x ({low:.2f}-{high:.2f})" in block, side
    assert f"{bench['sia']['packed_over_padded_median']:.2f}x" in block
