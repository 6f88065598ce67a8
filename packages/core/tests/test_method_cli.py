"""MethodCLI: the shared verbs every method package's command line is built from, run in-process on a test model.

Each verb is checked on its success path and on the user mistakes it must turn into one line and exit 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from bramley.core import registry
from bramley.core.checkpoint import load_model, save_checkpoint, save_pretrained
from bramley.core.classification import ImageData, LossSection, train_image_classifier
from bramley.core.cli import MethodCLI
from bramley.core.convert import Converted
from bramley.core.errors import CheckpointError
from bramley.core.layers.reparam import MobileOneBlock
from bramley.core.recipe import RecipeSchema, build_model
from shared.cli_testing import CLI


class RepNet(nn.Module):
    """A tiny reparameterizable image classifier taking ``inference_mode`` like every such bramley model."""

    def __init__(self, num_classes: int = 3, width: int = 4, in_chans: int = 3, inference_mode: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.block = MobileOneBlock(in_chans, width, 3, stride=2, num_conv_branches=2, inference_mode=inference_mode)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean((2, 3)))


class Plain(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


@dataclass
class Extra:
    """An eval option of the package (passed through to its evaluate function)."""

    scale: float = 1.0


@pytest.fixture(autouse=True)
def registered(monkeypatch, tmp_path):
    """Test models registered under a package ``clitest`` with a bundled ``smoke`` recipe."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_package_of", lambda module: "clitest")
    registry.register_model(name="clitest_repnet", input_size=(3, 16, 16))(RepNet)
    registry.register_model(name="clitest_plain", input_size=(3, 16, 16))(Plain)
    recipes = tmp_path / "pkgs" / "bramley" / "clitest" / "recipes"
    recipes.mkdir(parents=True)
    (recipes.parent / "__init__.py").write_text("")
    (recipes / "smoke.yaml").write_text(
        "model: {name: clitest_repnet}\n"
        "data: {source: digits, image_size: 16}\n"
        "optim: {lr: 0.05}\n"
        "train: {steps: 3, batch_size: 16, log_every: 1}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))


def convert_official(state_dict, model_name=None, scale: float = 1.0) -> Converted:
    """A converter for an 'official' layout that names the head ``fc`` instead of ``head``."""
    if "fc.weight" not in state_dict:
        raise CheckpointError("not an official clitest checkpoint: no fc.weight")
    renamed = {k.replace("fc.", "head."): v * scale if k.startswith("fc.") else v for k, v in state_dict.items()}
    return Converted(model_name or "clitest_repnet", {"num_classes": state_dict["fc.weight"].shape[0]}, renamed)


def make_cli(seen: list | None = None) -> MethodCLI:
    cli = MethodCLI("clitest", "a test method")
    cli.add_info(columns=lambda name: {"family": name.split("_")[1]})
    cli.add_reparam()
    cli.add_convert(
        convert_official, "convert an official file", lambda p: p.add_argument("--scale", type=float, default=1.0)
    )
    cli.add_export()
    schema = RecipeSchema("clitest", data=ImageData, loss=LossSection, default_recipe="smoke")
    cli.add_train(schema, lambda recipe, out: train_image_classifier(recipe, out))

    def evaluate(model, args):
        (seen if seen is not None else []).append((model, args))
        return {"params": sum(p.numel() for p in model.parameters()), "scale": args.scale}

    cli.add_eval(evaluate, "evaluate", lambda p: p.add_argument("--scale", type=float, default=1.0))

    def train_stage(recipe, out, args):  # a second training command with options of its own (a chain's stage)
        (seen if seen is not None else []).append((recipe.train.device, args.tag))
        return {"tag": args.tag}

    cli.add_train(schema, train_stage, "one stage", "train-stage", lambda p: p.add_argument("--tag", required=True))
    cli.add_reproduce("bramley_clitest_reproduce")
    return cli


cli = CLI(lambda argv: make_cli().main(argv), "bramley-clitest")


def test_info_lists_the_package_models(capsys):
    code, out, _ = cli.run(capsys, "info")
    assert code == 0
    assert "| clitest_plain" in out and "| clitest_repnet" in out and "| family" in out
    code, out, _ = cli.run(capsys, "info", "clitest_repnet", "--json")
    [row] = json.loads(out)
    assert row["model"] == "clitest_repnet" and row["input"] == "3x16x16" and row["family"] == "repnet"
    assert row["fused_params_M"] < row["params_M"], "fusion removes the branches"
    line = cli.user_error(capsys, ["info", "clitest_repnett"], "unknown clitest model 'clitest_repnett'; did you mean")
    assert line.startswith("bramley-clitest: error: unknown clitest model")


def test_reparam_fuses_checks_and_saves(capsys, tmp_path):
    code, out, _ = cli.run(capsys, "reparam", "--model", "clitest_repnet", "--out", tmp_path / "fused")
    assert code == 0 and "relative max difference to the unfused model" in out
    fused = load_model(tmp_path / "fused")
    assert fused.model_config["kwargs"]["inference_mode"] is True and fused.block.reparam_conv is not None
    gray = build_model("clitest_repnet", {"in_chans": 1})  # built for other channels than registered
    save_pretrained(gray, tmp_path / "gray")
    assert cli.run(capsys, "reparam", "--checkpoint", tmp_path / "gray", "--out", tmp_path / "g")[0] == 0
    trained = build_model("clitest_repnet")
    save_pretrained(trained, tmp_path / "trained")
    assert cli.run(capsys, "reparam", "--checkpoint", tmp_path / "trained", "--out", tmp_path / "f2")[0] == 0
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_model(tmp_path / "f2")(x), trained.eval()(x), atol=1e-5, rtol=1e-5)


def test_reparam_refusals(capsys, tmp_path):
    broken = build_model("clitest_repnet")
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    save_pretrained(broken, tmp_path / "nan")
    save_pretrained(build_model("clitest_plain"), tmp_path / "plain")
    cases = [
        (["--checkpoint", tmp_path / "nan"], "1 non-finite values in head.weight (a diverged or corrupt model)"),
        (["--checkpoint", tmp_path / "plain"], "clitest_plain has no reparameterizable blocks: nothing to fuse"),
        (["--model", "clitest_nope"], "unknown model 'clitest_nope'; did you mean"),
        (["--checkpoint", tmp_path / "missing"], "missing does not exist"),
    ]
    for source, message in cases:
        cli.user_error(capsys, ["reparam", *source, "--out", tmp_path / "out"], message)
    assert not (tmp_path / "out").exists(), "nothing is written for a refused model"
    argv = ["reparam", "--model", "clitest_repnet", "--checkpoint", "x", "--out", "o"]  # exactly one source
    cli.usage_error(capsys, argv, "argument --checkpoint: not allowed with argument --model")


def test_convert_reads_safely_converts_and_fuses(capsys, tmp_path):
    reference = build_model("clitest_repnet", {"num_classes": 5})
    official = {k.replace("head.", "fc."): v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": official, "epoch": 3}, tmp_path / "official.pth.tar")
    code, out, _ = cli.run(capsys, "convert", tmp_path / "official.pth.tar", "--out", tmp_path / "conv", "--fuse")
    assert code == 0 and "clitest_repnet" in out and "(official layout)" in out
    converted = load_model(tmp_path / "conv")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(converted(x), reference.eval()(x), atol=1e-5, rtol=1e-5)
    assert converted.model_config["kwargs"] == {"num_classes": 5, "inference_mode": True}
    code, _, _ = cli.run(capsys, "convert", tmp_path / "official.pth.tar", "--out", tmp_path / "c2", "--scale", "0")
    assert code == 0 and not load_model(tmp_path / "c2").head.weight.any(), "package options reach the converter"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "foreign.pth")
    cases = [
        (tmp_path / "evil.pth", "evil.pth is not a readable PyTorch checkpoint"),
        (tmp_path / "garbage.pth", "garbage.pth is not a readable PyTorch checkpoint"),
        (tmp_path / "foreign.pth", "not an official clitest checkpoint: no fc.weight"),
        (tmp_path / "absent.pth", "absent.pth does not exist"),
    ]
    for source, message in cases:
        code, out, err = cli.run(capsys, "convert", source, "--out", tmp_path / "bad")
        assert code == 2 and message in err and "pwned" not in out, err


def test_export_onnx_matches_pytorch(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = cli.run(capsys, "export", "--model", "clitest_repnet", "--out", tmp_path / "m.onnx")
    assert code == 0 and "onnxruntime relative max difference" in out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_train_writes_the_run_folder_and_eval_reads_it(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = cli.run(capsys, "train", "--out", out, "train.seed=3")
    assert code == 0 and '"num_classes": 10' in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "SHA256SUMS",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "recipe.yaml",
        "results.json",
    ]
    assert json.loads((out / "results.json").read_text())["metrics"]["step"] == 3.0
    assert "seed: 3" in (out / "recipe.yaml").read_text()
    seen: list = []
    code = make_cli(seen).main(["eval", "--checkpoint", str(out), "--scale", "2", "--out", str(tmp_path / "m.json")])
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())["scale"] == 2.0
    model, _ = seen[0]
    assert isinstance(model, RepNet) and model.num_classes == 10 and not model.training


def test_train_with_the_same_seed_is_bit_identical(capsys, tmp_path):
    weights = []
    for name in ("a", "b", "c"):
        seed = "1" if name != "c" else "2"
        assert cli.run(capsys, "train", "--out", tmp_path / name, f"train.seed={seed}")[0] == 0
        weights.append((tmp_path / name / "model.safetensors").read_bytes())
    assert weights[0] == weights[1], "the seed is set before the model and the data are built"
    assert weights[0] != weights[2]


def test_named_train_commands_get_their_options_and_device(capsys, tmp_path):
    seen: list = []
    assert make_cli(seen).main(["train-stage", "--tag", "a", "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    assert seen == [("cpu", "a")]
    assert json.loads((tmp_path / "s" / "results.json").read_text()) == {"tag": "a"}
    assert "device: cpu" in (tmp_path / "s" / "recipe.yaml").read_text(), "--device is the override train.device"
    cli.user_error(
        capsys,
        ["train", "--out", tmp_path / "t", "--device", "tpu"],
        "train.device='tpu' is not one of auto, cpu, cuda",
    )
    assert not (tmp_path / "t").exists()


def test_a_chain_of_runs_in_sub_folders_is_one_run(tmp_path):
    from bramley.core.run import clear_run, run_state

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "checkpoint.pt").write_bytes(b"state")
    (tmp_path / "notes.txt").write_text("kept")
    assert run_state(tmp_path) == "finished" and run_state(tmp_path / "new") == "unfinished"
    clear_run(tmp_path)
    assert run_state(tmp_path) == "empty" and (tmp_path / "notes.txt").read_text() == "kept"


def test_one_run_per_folder(capsys, tmp_path):
    out = tmp_path / "run"
    assert cli.run(capsys, "train", "--out", out)[0] == 0
    first = (out / "model.safetensors").read_bytes()
    message = "already holds a finished run: resume it (train.resume=true), write to another --out, or"
    cli.user_error(capsys, ["train", "--out", out, "train.seed=5"], message)
    assert (out / "model.safetensors").read_bytes() == first, "the refused run changed nothing"
    message = "is a finished run of 3 steps but this run asks for 5"
    cli.user_error(capsys, ["train", "--out", out, "train.resume=true", "train.steps=5"], message)
    assert cli.run(capsys, "train", "--out", out, "train.resume=true")[0] == 0, "resuming a finished run re-exports it"
    assert (out / "model.safetensors").read_bytes() == first
    assert cli.run(capsys, "train", "--out", out, "train.seed=5", "--overwrite")[0] == 0
    assert (out / "model.safetensors").read_bytes() != first, "--overwrite replaces the run"
    line = cli.user_error(capsys, ["train", "--out", tmp_path / "fresh", "train.resume=true"], "train.resume=true but")
    assert "has no checkpoint.pt to resume" in line
    assert cli.run(capsys, "train", "--out", tmp_path / "auto", "train.resume=auto")[0] == 0, "auto starts fresh"
    assert not (out / ".lock").exists(), "the lock goes with the run"


def test_resume_from_a_checkpoint_path(capsys, tmp_path):
    """train.resume=PATH (documented, once refused by the CLI's typing) continues that checkpoint into --out."""
    assert cli.run(capsys, "train", "--out", tmp_path / "a", "train.checkpoint_every=2", "train.steps=3")[0] == 0
    checkpoint = tmp_path / "a" / "checkpoint.pt"
    assert cli.run(capsys, "train", "--out", tmp_path / "b", f"train.resume={checkpoint}", "train.steps=3")[0] == 0
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    line = cli.user_error(
        capsys, ["train", "--out", tmp_path / "c", f"train.resume={tmp_path / 'nope.pt'}"], "nope.pt does not exist"
    )
    assert "resume checkpoint" in line


def test_a_live_run_holds_its_folder(capsys, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(  # another process holding the folder's run lock, as a live training does
        [sys.executable, "-c", "import sys, time; from bramley.core.run import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        cli.user_error(capsys, ["train", "--out", out], f"another run (pid {holder.pid}) is writing to")
        assert not (out / "recipe.yaml").exists(), "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait()
    assert cli.run(capsys, "train", "--out", out)[0] == 0, "a killed holder does not block the folder"


def test_train_errors_are_one_line(capsys, tmp_path):
    cases = [
        (["optim.lr=.nan"], "error: override 'optim.lr=.nan': config key 'optim.lr' must be a finite number, got nan"),
        (["model.name=clitest_nope"], "model: unknown model 'clitest_nope'. Did you mean: clitest_plain"),
        (["model.kwargs.depth=3"], "clitest_repnet(depth=3, num_classes=10) failed: "),
        (["model.kwargs.num_classes=4"], "model.kwargs.num_classes=4 but the training data has 10 classes"),
        (["data.source=folder"], "data.train is not set"),
        (["data.source=folder", f"data.train={tmp_path / 'none'}"], "none"),
        (["--recipe", "nope"], "unknown recipe 'nope'; bundled recipes: smoke"),
        (["data.image_size=0"], "data.image_size must be >= 1, got 0"),
    ]
    for extra, message in cases:
        cli.user_error(capsys, ["train", "--out", tmp_path / "bad", *extra], message)


def test_eval_errors(capsys, tmp_path):
    save_checkpoint(build_model("clitest_repnet").state_dict(), tmp_path / "no_config.safetensors")
    cases = [
        (["--checkpoint", tmp_path / "missing"], "missing does not exist"),
        (["--checkpoint", tmp_path / "no_config.safetensors"], "carries no bramley model config"),
        (["--checkpoint", "clitest_repnet", "--device", "cuda:7"], "device 'cuda:7' requested but"),
        (["--checkpoint", "clitest_repnet", "--device", "tpu"], "unknown device 'tpu'"),
    ]
    for argv, message in cases:
        cli.user_error(capsys, ["eval", *argv], message)


def test_reproduce_hands_over_every_argument(capsys, monkeypatch):
    import sys
    import types

    calls = []
    module = types.ModuleType("bramley_clitest_reproduce")
    module.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert cli.run(capsys, "reproduce", "--quick", "--out", "d")[0] == 0
    assert calls == [["--quick", "--out", "d"]]


def test_unwritable_out_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cli.user_error(capsys, ["reparam", "--model", "clitest_repnet", "--out", blocker / "sub"], "cannot write to")


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAMLEY_DEBUG", "1")
    with pytest.raises(CheckpointError):
        make_cli().main(["reparam", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


def test_image_eval_scores_an_image_folder_fused_or_not(capsys, tmp_path, image_folder):
    image_cli = MethodCLI("clitest", "a test method")
    image_cli.add_image_eval("top-1 on an ImageFolder", image_size=16, crop_pct=0.875)
    run = CLI(image_cli.main, "bramley-clitest")
    model = build_model("clitest_repnet", {"num_classes": 3})
    save_pretrained(model, tmp_path / "m")
    results = []
    for extra in ([], ["--fuse"]):
        code, out, _ = run.run(capsys, "eval", "--checkpoint", tmp_path / "m", "--data", image_folder, *extra)
        assert code == 0
        results.append(json.loads(out))
    assert set(results[0]) >= {"top1", "top5", "loss"}
    assert results[0]["top1"] == results[1]["top1"], "the fused model predicts the same classes"
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-4)
    save_pretrained(build_model("clitest_repnet", {"num_classes": 10}), tmp_path / "ten")
    run.user_error(
        capsys,
        ["eval", "--checkpoint", tmp_path / "ten", "--data", image_folder],
        "has 3 classes but the model predicts 10",
    )
