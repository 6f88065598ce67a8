import json

import pytest

from bramley.dataset_reinforcement.bench import format_bench, run_bench
from bramley.dataset_reinforcement.cli import main

# the smoke recipe shrunk further: 48 training images of 16 classes, 8 px
TINY = [
    "data.image_size=8",
    "data.synthetic={textures: [solid], counts: [1], train_size: 48, val_size: 16, test_size: 0, imbalance: 1.0}",
    "train.batch_size=16",
]


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: bramley-dataset-reinforcement" in capsys.readouterr().out


def test_reinforce_inspect_train_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["reinforce", "--recipe", "smoke", "--out", str(store), *TINY]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["shards_written"] == 1 and stats["bytes_per_image"] > 0
    assert main(["inspect", "--store", str(store), "--index", "5"]) == 0
    out = capsys.readouterr().out
    assert "48 samples x 2 augmentations, top-3 of 16 classes" in out and "sample 5, label" in out
    assert out.count("crop [") == 2 and "flip" in out
    assert main(["inspect", "--store", str(store), "--verify"]) == 0
    assert "verified 1/1 shards" in capsys.readouterr().out
    assert main(["train", "--recipe", "smoke", "--out", str(run), f"data.reinforced={store}", "data.p=1.0", *TINY]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["mode"] == "reinforced" and results["reinforced"] == str(store)
    assert {"eval_top1", "eval_ece", "eval_nll"} <= set(results["metrics"])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert {"top1", "ece", "nll", "robust_top1"} <= set(metrics) and set(metrics["corruptions"]) == {
        "noise",
        "blur",
        "contrast",
    }
    for mode in ("plain", "online_kd"):
        assert main(["train", "--recipe", "smoke", "--out", str(tmp_path / mode), f"loss.mode={mode}", *TINY]) == 0


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    err = _error(capsys, ["reinforce", "--recipe", "smoke", "--out", str(store), "data.reinforce.topk=17", *TINY])
    assert "topk=17 must be in [1, 16]" in err
    assert "p (probability of a stored augmentation) must be in [0, 1], got 1.5" in _error(
        capsys, ["train", "--recipe", "smoke", "--out", str(tmp_path / "r"), "data.p=1.5"]
    )
    assert main(["reinforce", "--recipe", "smoke", "--out", str(store), *TINY]) == 0
    shard = store / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    capsys.readouterr()
    assert "shard-00000.safetensors is truncated or corrupt" in _error(capsys, ["inspect", "--store", str(store)])
    assert "1 of 1 shards are missing or unreadable" in _error(capsys, ["inspect", "--store", str(store), "--verify"])
    assert "is not a reinforced dataset" in _error(capsys, ["inspect", "--store", str(tmp_path)])
    other = [
        "train",
        "--recipe",
        "smoke",
        "--out",
        str(tmp_path / "t"),
        f"data.reinforced={store}",
        "data.image_size=8",
    ]
    assert "they do not match" in _error(capsys, other)  # the smoke data has 192 images, the store 48


def test_bench_runs_tiny():
    result = run_bench(rounds=2, steps=1, batch_size=8, threads=1, num_images=32, num_augmentations=2, num_teachers=1)
    assert set(result["step_time_vs_plain"]) == {"reinforced", "online_kd"}
    assert result["reinforce"]["bytes_per_image"] > 0 and result["reinforce"]["images_per_s"] > 0
    text = format_bench(result)
    assert "| reinforced" in text and "bytes stored per training image" in text
