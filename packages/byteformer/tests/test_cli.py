"""The CLI end to end at toy scale: encode -> train (byte folder, token budget) -> eval; recipe smoke runs; bench."""

import json
import shutil
from pathlib import Path

import pytest

from bramley.byteformer.cli import RECIPES, main

# a two-block BF-Ti (corenet's per-block pattern cut to depth 2) so the recipes run in a second
TINY = [
    "model.kwargs.depth=2",
    "model.kwargs.embed_dim=32",
    "model.kwargs.num_heads=2",
    "model.kwargs.window_shifts=[0,4]",
    "model.kwargs.window_sizes=[8]",
    "model.kwargs.downsample=[true,false]",
    "model.kwargs.max_num_tokens=1024",
    "train.epochs=1",
    "train.batch_size=4",
    "train.eval_batch_size=64",
    "train.grad_accum_steps=1",
    "train.warmup_steps=0",
    "train.num_workers=0",
    "train.amp=none",
    "train.ema_decay=null",
    "train.progress=false",
    "train.checkpoint_every=0",
]


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bramley-byteformer" in out
    assert all(cmd in out for cmd in ("encode", "train", "eval", "bench", "reproduce", "info"))


def test_info(capsys):
    assert main(["info", "byteformer_tiny"]) == 0
    out = capsys.readouterr().out
    assert "byteformer_tiny" in out and "192" in out


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "audio"
    assert (
        main(["encode", "--dataset", "audio", "--spec", "wav:uint8", "--clips-per-class", "2", "--out", str(out)]) == 0
    )
    return out


def test_encode_train_eval_on_byte_files(audio_files, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "data.source=byte_folder", f"data.train_dir={audio_files / 'train'}"]
    argv += [f"data.val_dir={audio_files / 'val'}", "data.spec=", "data.batch_tokens=4000", *TINY]
    assert main(argv) == 0
    capsys.readouterr()
    assert (run / "model" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    assert main(["eval", "--checkpoint", str(run / "model"), "--bytes", str(audio_files / "test")]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.rfind("{\n") :])
    assert set(result) == {"top1", "top5", "loss"} and 0 <= result["top1"] <= 100


def test_token_budget_rejected_for_random_crops(image_folder, tmp_path):
    argv = ["train", "--config", "imagenet_tiff.yaml", f"data.train_dir={image_folder}", "data.batch_tokens=9000"]
    with pytest.raises(SystemExit):
        main([*argv, "data.image_size=24", *TINY])


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("imagenet_tiff.yaml", ["data.image_size=24", "data.rand_augment=false"]),
        ("imagenet_jpeg.yaml", ["data.image_size=24", "model.kwargs.max_num_tokens=4096"]),
        ("speech_commands_wav.yaml", []),
    ],
)
def test_recipes_smoke(recipe, extra, image_folder, audio_files, tmp_path):
    from bramley.core.config import load_config

    cfg = load_config(RECIPES / recipe)
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["lr"] == 1e-3 and cfg["train"]["epochs"] == 300
    if recipe.startswith("speech"):
        data = tmp_path / "sc"
        shutil.copytree(audio_files / "train", data / "train")
        shutil.copytree(audio_files / "val", data / "val")
    else:
        data = tmp_path / "imagenet"
        for split in ("train", "val"):
            shutil.copytree(image_folder, data / split)
    argv = ["train", "--config", recipe, "--out", str(tmp_path / "run"), f"data.train_dir={data / 'train'}"]
    assert main([*argv, f"data.val_dir={data / 'val'}", *TINY, *extra]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_bench_code_path(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--depth", "2", "--embed-dim", "32", "--num-heads", "2", "--samples", "4", "--batch-size", "2"]
    argv += ["--min-size", "24", "--max-size", "40", "--rounds", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["packed_samples_per_s"] > 0 and result["padded_samples_per_s"] > 0
    assert result["max_abs_logit_diff_packed_vs_padded"] < 1e-4
    assert 0 <= result["padding_fraction"] < 1 and result["bytes_min"] < result["bytes_max"]


@pytest.mark.parametrize(("source", "spec"), [("digits", "png:level=9"), ("audio", "wav:uint8")])
def test_train_on_bundled_sets(source, spec, tmp_path):
    argv = ["train", "--out", str(tmp_path), f"data.source={source}", f"data.spec={spec}", "data.batch_tokens=20000"]
    assert main([*argv, "data.clips_per_class=3", *TINY, "train.steps=2", "model.kwargs.conv_kernel_size=16"]) == 0
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_unknown_source_is_a_clean_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path), "data.source=videos", *TINY])
