"""The CLI end to end at toy scale: every verb's success path and the user mistakes it turns into one line + exit 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bramley.byteformer.cli import main
from bramley.byteformer.model import ByteFormer
from bramley.byteformer.train import SCHEMA
from bramley.core import registry
from bramley.core.checkpoint import load_model, save_pretrained
from bramley.core.recipe import load_recipe
from shared.cli_testing import CLI

RECIPES = Path(__file__).resolve().parents[1] / "src" / "bramley" / "byteformer" / "recipes"

cli = CLI(main, "bramley-byteformer")


def test_help_lists_every_verb(capsys):
    out = cli.help(capsys)
    assert "usage: bramley-byteformer" in out
    assert all(cmd in out for cmd in ("info", "convert", "train", "eval", "encode", "bench", "reproduce"))


def test_info(capsys):
    code, out, _ = cli.run(capsys, "info")
    assert code == 0 and "| byteformer_base" in out and "| params_M_without_pos_table" in out and "50000" in out
    code, out, _ = cli.run(capsys, "info", "byteformer_tiny", "--json")
    [row] = json.loads(out)
    assert row["embed_dim"] == 192 and row["num_heads"] == 3 and round(row["params_M"], 2) == 16.81
    assert round(row["params_M_without_pos_table"], 2) == 7.21
    cli.user_error(capsys, ["info", "byteformer_tiy"], "unknown byteformer model 'byteformer_tiy'; did you mean")


# ---------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_every_bundled_recipe_loads(name):
    recipe = load_recipe(SCHEMA, name)
    assert recipe.model.name == "byteformer_tiny"
    if name != "smoke":  # the paper's hyperparameters (corenet's projects/byteformer configs)
        optim, train = recipe.optim, recipe.train
        assert (optim.optimizer, optim.lr, optim.weight_decay, tuple(optim.betas)) == (
            "adamw",
            1e-3,
            0.05,
            (0.9, 0.999),
        )
        assert (optim.schedule, optim.warmup_start_factor, optim.min_lr_ratio) == ("cosine", 1e-3, 0.02)
        assert optim.warmup_steps == (500 if name.startswith("speech") else 7500) and not optim.decay_norm_and_bias
        assert (train.epochs, train.batch_size, train.grad_accum_steps, train.ema_decay) == (300, 48, 2, 0.9999)
        assert recipe.loss.label_smoothing == 0.1 and recipe.model.kwargs["max_num_tokens"] == 50000


def test_default_recipe_is_the_paper_tiff_one():
    assert load_recipe(SCHEMA).to_dict() == load_recipe(SCHEMA, "imagenet_tiff").to_dict()


def test_smoke_recipe_trains_and_the_run_folder_loads(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = cli.run(capsys, "train", "--recipe", "smoke", "--out", out)
    assert code == 0 and '"num_classes": 10' in stdout
    assert {"model.safetensors", "config.json", "recipe.yaml", "results.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "results.json").read_text())["metrics"]["eval_top1"] > 10.0
    model = load_model(out)
    assert isinstance(model, ByteFormer) and model.num_classes == 10 and model.embed_dim == 64
    assert load_recipe(SCHEMA, out / "recipe.yaml").to_dict() == load_recipe(SCHEMA, "smoke").to_dict()


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "audio"
    assert (
        main(["encode", "--dataset", "audio", "--spec", "wav:uint8", "--clips-per-class", "2", "--out", str(out)]) == 0
    )
    return out


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("imagenet_tiff", ["data.image_size=24", "data.rand_augment=false"]),
        ("imagenet_jpeg", ["data.image_size=24", "model.kwargs.max_num_tokens=4096"]),
        ("speech_commands_wav", []),
    ],
)
def test_paper_recipes_run_at_toy_scale(recipe, extra, image_folder, audio_files, tmp_path, capsys, tiny_recipe):
    if recipe.startswith("speech"):
        data = tmp_path / "sc"
        shutil.copytree(audio_files / "train", data / "train")
        shutil.copytree(audio_files / "val", data / "val")
    else:
        data = tmp_path / "imagenet"
        for split in ("train", "val"):
            shutil.copytree(image_folder, data / split)
    argv = ["train", "--recipe", recipe, "--out", tmp_path / "run", f"data.train={data / 'train'}"]
    code, _, err = cli.run(capsys, *argv, f"data.val={data / 'val'}", *tiny_recipe, *extra)
    assert code == 0, err
    assert isinstance(load_model(tmp_path / "run"), ByteFormer)


def test_encode_train_eval_on_byte_files(audio_files, tmp_path, capsys, tiny_recipe):
    run_dir = tmp_path / "run"
    argv = ["train", "--out", run_dir, "data.source=byte_folder", f"data.train={audio_files / 'train'}"]
    argv += [f"data.val={audio_files / 'val'}", "data.spec=", "data.batch_tokens=4000", *tiny_recipe]
    assert cli.run(capsys, *argv)[0] == 0
    code, out, _ = cli.run(
        capsys, "eval", "--checkpoint", run_dir, "--bytes", audio_files / "test", "--out", tmp_path / "m"
    )
    result = json.loads(out)
    assert code == 0 and set(result) == {"checkpoint", "top1", "top5", "loss"} and 0 <= result["top1"] <= 100
    assert json.loads((tmp_path / "m").read_text()) == result
    code, _, _ = cli.run(capsys, "eval", "--checkpoint", run_dir / "model.safetensors", "--bytes", audio_files / "test")
    assert code == 0


@pytest.mark.parametrize(("source", "spec"), [("digits", "png:level=9"), ("audio", "wav:uint8")])
def test_train_on_bundled_sets(source, spec, tmp_path, capsys):
    argv = ["train", "--recipe", "smoke", "--out", tmp_path, f"data.source={source}", f"data.spec={spec}"]
    extra = [
        "data.clips_per_class=3",
        "train.batch_size=4",
        "train.steps=2",
        "optim.warmup_epochs=0",
        "data.image_size=12",
    ]
    assert cli.run(capsys, *argv, *extra)[0] == 0
    assert (tmp_path / "model.safetensors").is_file()


#: a two-block ByteFormer built directly (not trained)
TOY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_sizes": [8], "window_shifts": [0, 4], "downsample": [1, 1]}


def test_images_eval(image_folder, tmp_path, capsys):
    save_pretrained(registry.create_model("byteformer_tiny", num_classes=3, **TOY), tmp_path / "m")
    code, out, _ = cli.run(capsys, "eval", "--checkpoint", tmp_path / "m", "--images", image_folder, "--spec", "png")
    assert code == 0 and json.loads(out)["top1"] >= 0
    argv = ["eval", "--checkpoint", tmp_path / "m", "--images", image_folder, "--spec", "tiff", "--image-size", "16"]
    assert cli.run(capsys, *argv)[0] == 0


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def byte_folder(tmp_path) -> Path:
    root = tmp_path / "bytes"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.bin").write_bytes(bytes(range(40 + i)))
    return root


def test_train_errors_are_one_line(capsys, tmp_path, byte_folder, image_folder):
    runs = iter(range(100))

    def train(*overrides, recipe="smoke"):  # a fresh run folder each time: a failed run leaves its recipe.yaml
        return ["train", "--recipe", recipe, "--out", tmp_path / f"run{next(runs)}", *overrides]

    folder = ["data.source=byte_folder", f"data.train={byte_folder}", "data.spec="]
    cases = [
        (["data.source=videos"], "config key 'data.source' must be one of"),
        (["data.batch_tokens=0"], "data.batch_tokens must be >= 1"),
        (["data.image_size=0"], "data.image_size must be >= 1"),
        (["data.channels=2"], "config key 'data.channels' must be one of 1 | 3"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.epochs=-1"], "train.epochs must be >= 1"),
        (["train.device=cuda:7"], "device 'cuda:7' requested but"),
        (["loss.mixup=0.2"], "loss.mixup and loss.cutmix mix image batches"),
        (["model.name=byteformer_tiyn"], "unknown model 'byteformer_tiyn'. Did you mean: byteformer_tiny"),
        (["model.kwargs.depth=two"], "byteformer_tiny("),
        (["model.kwargs.window_shifts=[0]"], "window_shifts needs one entry per block"),
        (["data.spec=tif"], "data.spec='tif' for data.source=digits: needs an encoding spec"),
        (["data.train=/somewhere"], "data.source=digits is bundled data: data.train / data.val must stay null"),
        (["data.source=byte_folder", "data.spec="], "data.train is not set"),
        (["data.batch_tokens=100"], "more than the batch budget of 100 (data.batch_tokens)"),
        ([*folder, f"data.train={tmp_path / 'missing'}"], "missing does not exist"),
        ([*folder, "data.spec=tiff"], "needs byte transforms (or empty)"),
        ([*folder, f"data.val={image_folder}"], "have different classes"),
    ]
    for overrides, message in cases:
        cli.user_error(capsys, train(*overrides), message)
    crops = train(f"data.train={image_folder}", "data.batch_tokens=9000", recipe="imagenet_tiff")
    cli.user_error(capsys, crops, "data.batch_tokens needs static byte lengths")
    (tmp_path / "file").write_text("")
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", tmp_path / "file" / "run"], "file/run")


def test_bad_files_are_refused_before_training(capsys, tmp_path, byte_folder):
    argv = ["train", "--recipe", "smoke", "data.source=byte_folder", "data.spec=", f"data.train={byte_folder}"]
    empty = byte_folder / "a" / "empty.bin"
    empty.write_bytes(b"")
    cli.user_error(capsys, [*argv, "--out", tmp_path / "run1"], f"{empty} is empty")
    empty.unlink()
    broken = byte_folder / "b" / "gone.bin"
    broken.symlink_to(byte_folder / "nowhere")
    cli.user_error(capsys, [*argv, "--out", tmp_path / "run2"], f"{broken} cannot be read")
    assert not any(tmp_path.glob("run*/metrics.jsonl")), "no training step ran"


class NotByteFormer(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.head = nn.Linear(3, num_classes)


def test_eval_errors_are_one_line(capsys, tmp_path, byte_folder, image_folder, monkeypatch):
    save_pretrained(registry.create_model("byteformer_tiny", num_classes=5, **TOY), tmp_path / "m")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model(name="clitest_other")(NotByteFormer)
    save_pretrained(registry.create_model("clitest_other"), tmp_path / "other")
    ok = ["eval", "--checkpoint", tmp_path / "m"]
    cases = [
        ([*ok, "--bytes", byte_folder], "the model has 5 classes but the data has 2"),
        ([*ok, "--images", image_folder], "--images / --audio need --spec"),
        ([*ok, "--images", image_folder, "--spec", "tif"], "--spec 'tif': unknown format"),
        ([*ok, "--bytes", tmp_path / "nope"], "does not exist"),
        ([*ok, "--bytes", byte_folder, "--device", "cuda:7"], "device 'cuda:7' requested but"),
        ([*ok, "--bytes", byte_folder, "--out", tmp_path], f"--out {tmp_path} is a folder; give a file name"),
        (["eval", "--checkpoint", tmp_path / "missing", "--bytes", byte_folder], "missing does not exist"),
        (["eval", "--checkpoint", tmp_path / "bad.safetensors", "--bytes", byte_folder], "not a readable safetensors"),
        (
            ["eval", "--checkpoint", tmp_path / "other", "--bytes", byte_folder],
            "holds a NotByteFormer, not a ByteFormer",
        ),
    ]
    for argv, message in cases:
        cli.user_error(capsys, argv, message)
    cli.usage_error(capsys, [*ok, "--bytes", byte_folder, "--batch-size", "0"], "must be >= 1, got 0")  # argparse


# ---------------------------------------------------------------------------------------------------- bench
BENCH = ["bench", "--depth", "2", "--embed-dim", "32", "--num-heads", "2", "--samples", "4", "--batch-size", "2"]
BENCH += ["--min-size", "24", "--max-size", "40", "--rounds", "1", "--device", "cpu"]


def test_bench_code_path(tmp_path, capsys):
    out, markdown = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    markdown.write_text("prose\n\n<!-- bench_byteformer:cpu:start -->\nold\n<!-- bench_byteformer:cpu:end -->\n")
    argv = [a if a != "1" or BENCH[i - 1] != "--rounds" else "3" for i, a in enumerate(BENCH)]  # three rounds
    assert cli.run(capsys, *argv, "--out", out, "--markdown", markdown)[0] == 0
    result = json.loads(out.read_text())
    assert result["packed_samples_per_s"] > 0 and result["padded_samples_per_s"] > 0
    assert result["max_abs_logit_diff_packed_vs_padded"] < 1e-4
    assert 0 <= result["padding_fraction"] < 1 and result["bytes_min"] < result["bytes_max"]
    assert result["padding_bound"] == pytest.approx(1 / (1 - result["padding_fraction"]))
    # interleaved rounds: the ratio is the median of the per-round ratios, reported with its spread
    ratios = result["round_ratios"]
    assert len(ratios) == 3 and len(result["round_seconds"]["packed"]) == len(result["round_seconds"]["padded"]) == 3
    assert result["packed_over_padded"] == sorted(ratios)[1]
    assert result["ratio_range"] == [min(ratios), max(ratios)]
    assert min(ratios) <= result["ratio_iqr"][0] <= result["packed_over_padded"] <= result["ratio_iqr"][1]
    assert f"torch {torch.__version__}" in result["peer"]
    text = markdown.read_text()  # the table replaced the old block and shows the command that made it
    assert text.startswith("prose") and "old" not in text and "`bramley byteformer bench --depth 2" in text
    assert f"**{result['packed_over_padded']:.2f}x**" in text


def test_bench_errors(tmp_path, capsys):
    cases = [
        (["--min-size", "50"], "--min-size 50 is larger than --max-size 40"),
        (["--samples", "1"], "--samples 1 < --batch-size 2"),
        (["--model", "mrl_mlp"], "--model 'mrl_mlp' is not a ByteFormer variant"),
        (["--device", "cuda:7"], "device 'cuda:7' requested but"),
        (["--kernel-size", "1"], "conv_kernel_size must be >= 2"),
        (["--out", tmp_path], f"--out {tmp_path} is a folder; give a file name"),
        (["--embed-dim", "30", "--num-heads", "4"], "--model: byteformer_tiny("),
    ]
    for extra, message in cases:
        cli.user_error(capsys, [*BENCH, *extra], message)
    for option in ("--samples", "--rounds", "--batch-size", "--threads"):
        cli.usage_error(capsys, [*BENCH, option, "0"], "must be >= 1")


# ---------------------------------------------------------------------------------------------------- reproduce
def test_reproduce_quick_prints_claim_and_verdict(tmp_path, capsys):
    code, out, _ = cli.run(capsys, "reproduce", "--quick", "--seeds", "0", "--out", tmp_path)
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1].startswith("verdict: ") and "of 5 checks hold" in lines[-1]
    assert any(line.startswith("claim: a transformer classifies files from their raw bytes") for line in lines)
    assert json.loads((tmp_path / "results.json").read_text())["quick"] is True
