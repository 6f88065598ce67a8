"""Official RAIVNLab/MRL checkpoints -> mrl_resnet50: state dicts with the official key names, made here, give the
same logits as the official architecture (a torchvision ResNet-50 with MRL_Linear_Layer and FFCV's BlurPool,
re-derived below) computed from the same tensors."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.checkpoint import load_model
from bramley.core.convert import build_converted
from bramley.core.errors import CheckpointError, ConfigError
from bramley.mrl import convert_official
from bramley.mrl.cli import main

NESTING = [8, 16, 32, 64, 128, 256, 512, 1024, 2048]  # the official NESTING_LIST


class OfficialMRLHead(nn.Module):
    """The official MRL_Linear_Layer's parameters and forward: ``nesting_classifier_{i}``; MRL-E keeps only
    ``nesting_classifier_0`` (``nesting[-1]`` inputs), sliced per size, its bias added to every size."""

    def __init__(self, nesting, num_classes, efficient):
        super().__init__()
        self.nesting, self.efficient = nesting, efficient
        for i, m in enumerate(nesting[-1:] if efficient else nesting):
            setattr(self, f"nesting_classifier_{i}", nn.Linear(m, num_classes))

    def forward(self, x):
        if self.efficient:
            w, b = self.nesting_classifier_0.weight, self.nesting_classifier_0.bias
            return tuple(x[:, :m] @ w[:, :m].t() + b for m in self.nesting)
        return tuple(getattr(self, f"nesting_classifier_{i}")(x[:, :m]) for i, m in enumerate(self.nesting))


class OfficialBlurPool(nn.Module):
    """FFCV's BlurPoolConv2d: a saved ``blur_filter`` buffer (the 3x3 binomial filter per channel), then ``conv``."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        taps = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.register_buffer("blur_filter", taps.repeat(conv.in_channels, 1, 1, 1))

    def forward(self, x):
        return self.conv(F.conv2d(x, self.blur_filter, padding=1, groups=self.conv.in_channels))


def official_blurpool(module):
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, OfficialBlurPool(child))
        else:
            official_blurpool(child)


def official_model(efficient: bool, blurpool: bool, num_classes: int = 7) -> nn.Module:
    """torchvision's ResNet-50 as the official training builds it, with random weights and BatchNorm statistics."""
    from torchvision.models import resnet50

    model = resnet50()
    model.fc = OfficialMRLHead(NESTING, num_classes, efficient)
    if blurpool:
        official_blurpool(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # initial statistics (mean 0, var 1) would hide a misplaced tensor
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def ddp_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the official training saves it: from a DistributedDataParallel wrapper."""
    return {f"module.{k}": v for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=[(False, True), (True, False)], ids=["mrl-blurpool", "mrl-e"])
def official(request):
    efficient, blurpool = request.param
    torch.manual_seed(0)
    model = official_model(efficient, blurpool)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return model, x, model(x), efficient, blurpool


def test_official_state_dicts_convert_to_equal_logits(official):
    model, x, expected, efficient, blurpool = official
    converted = convert_official(ddp_state(model))
    assert converted.model_name == "mrl_resnet50"
    assert converted.model_kwargs == {
        "num_classes": 7,
        "nesting": NESTING,
        "efficient": efficient,
        "blurpool": blurpool,
    }
    ours = build_converted(converted)
    with torch.no_grad():
        got = ours(x)
    assert len(got) == len(NESTING)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.embed(x), _features(model, x), rtol=1e-4, atol=1e-4)


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official representation: the avgpool output (what the official retrieval code hooks)."""
    with torch.no_grad():
        return torch.flatten(model.avgpool(nn.Sequential(*list(model.children())[:-2])(x)), 1)


def test_the_old_mrl_e_notation_needs_efficient(official):
    """The released MRL-E weights (the official repo's "old notation") keep their head as a plain ``fc``."""
    model, x, expected, efficient, _ = official
    if not efficient:
        pytest.skip("an MRL-E layout")
    state = {k.replace("fc.nesting_classifier_0.", "fc."): v for k, v in ddp_state(model).items()}
    with pytest.raises(CheckpointError, match=r"plain fc head.*convert that with --efficient"):
        convert_official(state)
    converted = convert_official(state, efficient=True)
    assert converted.source == "official MRL-E (old notation)"
    with torch.no_grad():
        torch.testing.assert_close(build_converted(converted)(x)[-1], expected[-1], rtol=1e-4, atol=1e-4)


def test_converter_refusals(official):
    model, _, _, efficient, _ = official
    state = ddp_state(model)
    with pytest.raises(ConfigError, match="official MRL checkpoints are ResNet-50s"):
        convert_official(state, "mrl_backbone")
    without_head = {k: v for k, v in state.items() if ".fc." not in k}
    with pytest.raises(CheckpointError, match=r"no fc\.nesting_classifier_<i> heads"):
        convert_official(without_head)
    if efficient:
        assert convert_official(state, nesting=[64, 2048]).model_kwargs["nesting"] == [64, 2048]
        with pytest.raises(ConfigError, match=r"larger than the feature dim 2048"):
            convert_official(state, nesting=[8, 4096])
    else:
        with pytest.raises(ConfigError, match=r"nesting \[8, 2048\] does not match the checkpoint's heads"):
            convert_official(state, nesting=[8, 2048])
        with pytest.raises(ConfigError, match="an MRL \\(not MRL-E\\) layout"):
            convert_official(state, efficient=True)
        bad_blur = {**state, "module.layer2.0.conv2.blur_filter": torch.ones(128, 1, 3, 3)}
        with pytest.raises(CheckpointError, match="not FFCV's 3x3 binomial BlurPool filter"):
            convert_official(bad_blur)
        missing = {k: v for k, v in state.items() if "layer4.2.conv3" not in k}
        with pytest.raises(CheckpointError, match=r"missing keys \(1\): backbone.layer4.2.conv3.weight"):
            build_converted(convert_official(missing))


def test_convert_command(official, tmp_path, capsys):
    model, x, expected, efficient, _ = official
    if efficient:
        pytest.skip("one layout end to end is enough")
    torch.save(ddp_state(model), tmp_path / "final_weights.pt")
    assert main(["convert", str(tmp_path / "final_weights.pt"), "--out", str(tmp_path / "conv")]) == 0
    assert "official MRL layout" in capsys.readouterr().out
    loaded = load_model(tmp_path / "conv")
    with torch.no_grad():
        for a, b in zip(loaded(x), expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    config = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert config == {
        "name": "mrl_resnet50",
        "kwargs": {"num_classes": 7, "nesting": NESTING, "efficient": False, "blurpool": True},
    }

    (tmp_path / "truncated.pt").write_bytes((tmp_path / "final_weights.pt").read_bytes()[:1000])
    torch.save({k: v for k, v in ddp_state(model).items() if ".fc." not in k}, tmp_path / "resnet.pt")
    cases = [
        ([tmp_path / "absent.pt"], "absent.pt does not exist"),
        ([tmp_path / "truncated.pt"], "truncated.pt is not a readable PyTorch checkpoint"),
        ([tmp_path / "resnet.pt"], "not an official MRL checkpoint: no fc.nesting_classifier_<i> heads"),
        ([tmp_path / "final_weights.pt", "--model", "mrl_mlp"], "the model is mrl_resnet50, not 'mrl_mlp'"),
        ([tmp_path / "final_weights.pt", "--nesting", "8", "2048"], "does not match the checkpoint's heads"),
        ([tmp_path / "final_weights.pt", "--fuse"], "--fuse: mrl_resnet50 has no reparameterizable blocks"),
    ]
    for argv, message in cases:
        code = main(["convert", *map(str, argv), "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
