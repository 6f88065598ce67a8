"""Official FastViT / MobileCLIP / timm checkpoints -> bramley, on state dicts with the official key names."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.fastvit import checkpoint_filter_fn

from bramley.core import CheckpointError, create_model
from bramley.core.convert import Converted, build_converted, load_official_file
from bramley.fastvit import reparameterize
from bramley.fastvit.convert import bramley_to_official, bramley_to_timm, convert_official, official_to_bramley

# Key names of the official code (apple/ml-fastvit models/fastvit.py + modules/mobileone.py + replknet.py) for
# FastViT-SA12: network = [stage1, PatchEmbed, stage2, PatchEmbed, stage3, PatchEmbed, RepCPE, stage4].
OFFICIAL_SA12_KEYS = [
    "patch_embed.0.rbr_conv.0.conv.weight",
    "patch_embed.0.rbr_scale.bn.running_var",
    "patch_embed.2.rbr_skip.weight",
    "network.0.0.token_mixer.norm.rbr_skip.running_mean",
    "network.0.0.token_mixer.mixer.rbr_conv.0.bn.weight",
    "network.0.0.token_mixer.mixer.rbr_scale.conv.weight",
    "network.0.0.token_mixer.layer_scale",
    "network.0.0.convffn.conv.conv.weight",
    "network.0.0.convffn.conv.bn.bias",
    "network.0.0.convffn.fc2.bias",
    "network.0.1.layer_scale",
    "network.1.proj.0.lkb_origin.conv.weight",
    "network.1.proj.0.small_conv.bn.running_mean",
    "network.1.proj.1.rbr_conv.0.conv.weight",
    "network.4.5.layer_scale",
    "network.5.proj.0.lkb_origin.bn.weight",
    "network.6.pe.weight",
    "network.7.0.norm.running_var",
    "network.7.0.token_mixer.qkv.weight",
    "network.7.0.token_mixer.proj.bias",
    "network.7.1.layer_scale_2",
    "conv_exp.rbr_conv.0.conv.weight",
    "conv_exp.se.reduce.weight",
    "conv_exp.se.expand.bias",
    "head.weight",
]


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_official_sa12_names_convert_exactly(randomize):
    model = randomize(create_model("fastvit_sa12").eval())
    official = bramley_to_official(model.state_dict())
    assert set(OFFICIAL_SA12_KEYS) <= set(official)
    assert not any(k.startswith(("stages", "stem", "final_conv")) for k in official)
    # an independent reader of official checkpoints (timm's filter) accepts exactly these names
    ref = timm.create_model("fastvit_sa12")
    ref.load_state_dict(checkpoint_filter_fn({"state_dict": official}, ref))
    converted = convert_official(official)
    assert isinstance(converted, Converted)
    assert converted.model_name == "fastvit_sa12" and converted.source == "official"
    assert converted.model_kwargs == {"num_classes": 1000}
    assert all(torch.equal(converted.state_dict[k], v) for k, v in model.state_dict().items())
    assert set(converted.state_dict) == set(model.state_dict())


def test_official_fused_checkpoint(randomize):
    fused = reparameterize(randomize(create_model("fastvit_sa12").eval()))
    official = bramley_to_official(fused.state_dict())
    for key in (
        "patch_embed.0.reparam_conv.weight",
        "network.1.proj.0.lkb_reparam.weight",
        "network.6.reparam_conv.bias",
    ):
        assert key in official  # official fused (*_reparam.pth.tar) names
    assert "network.0.0.token_mixer.reparam_conv.weight" in official
    converted = convert_official(official)
    assert converted.model_kwargs == {"num_classes": 1000, "inference_mode": True}
    loaded = create_model(converted.model_name, **converted.model_kwargs)
    loaded.load_state_dict(converted.state_dict)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(loaded, x), _logits(fused, x))


def test_mobileclip_image_encoder_checkpoint(randomize):
    model = randomize(create_model("fastvit_mci0").eval())
    assert "head.fc.bias" not in model.state_dict()  # MobileCLIP's projection has no bias
    official = bramley_to_official(model.state_dict(), mobileclip=True)
    assert official["image_encoder.model.head.proj"].shape == (1024, 512)  # (in, out), applied as x @ proj
    assert "image_encoder.model.network.5.proj.0.se.fc1.weight" in official  # timm SE in MobileCLIP's downsampling
    assert "image_encoder.model.conv_exp.se.reduce.weight" in official
    full = {**official, "text_encoder.embedding_layer.weight": torch.zeros(3, 2), "logit_scale": torch.ones(())}
    ref = timm.create_model("fastvit_mci0")
    ref.load_state_dict(checkpoint_filter_fn(full, ref))
    converted = convert_official(full)
    assert converted.model_name == "fastvit_mci0" and converted.source == "mobileclip"
    assert converted.model_kwargs == {"num_classes": 512}
    assert sorted(converted.ignored) == ["logit_scale", "text_encoder.embedding_layer.weight"]
    loaded = build_converted(converted)
    assert all(torch.equal(converted.state_dict[k], v) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), rtol=0, atol=1e-6)
    torch.testing.assert_close(_logits(ref, x), _logits(model, x), rtol=0, atol=1e-5)


def test_mci_module_state_dict_converts_without_a_prefix(randomize):
    """What ``image_encoder.state_dict()`` of the official MobileCLIP code gives: keys under ``model.``."""
    model = randomize(create_model("fastvit_mci0").eval())
    prefix = "image_encoder."
    mci = {k[len(prefix) :]: v for k, v in bramley_to_official(model.state_dict(), mobileclip=True).items()}
    assert all(k.startswith("model.") for k in mci) and "model.head.proj" in mci
    converted = convert_official(mci)
    assert (converted.model_name, converted.source, converted.ignored) == ("fastvit_mci0", "mobileclip", [])
    assert set(converted.state_dict) == set(model.state_dict())
    assert all(torch.equal(converted.state_dict[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["fastvit_mci0", "fastvit_mci1", "fastvit_mci2"])
def test_mci_parameters_are_the_official_towers(name):
    """The official tower's head is a bias-free (in, out) projection; timm's carries a zero bias there."""
    with torch.device("meta"):
        ours, theirs = create_model(name), timm.create_model(name)
    n_ours, n_timm = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert n_ours == n_timm - 512
    official = bramley_to_official(ours.state_dict(), mobileclip=True)
    n_official = sum(
        v.numel() for k, v in official.items() if not k.endswith(("running_mean", "running_var", "_tracked"))
    )
    assert n_ours == n_official


def test_timm_mci_zero_bias_round_trip(randomize):
    """bramley -> timm adds timm's zero bias, convert drops it: both directions exact; a trained bias is kept."""
    model = randomize(create_model("fastvit_mci0").eval())
    timm_sd = bramley_to_timm(model.state_dict())
    assert not timm_sd["head.fc.bias"].any()
    ref = timm.create_model("fastvit_mci0").eval()
    ref.load_state_dict(timm_sd)
    converted = convert_official(ref.state_dict())
    assert converted.source == "timm" and converted.model_kwargs == {"num_classes": 512}
    assert set(converted.state_dict) == set(model.state_dict())
    assert all(torch.equal(converted.state_dict[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        ref.head.fc.bias.fill_(0.5)  # e.g. fine-tuned as a classifier in timm
    converted = convert_official(ref.state_dict())
    assert converted.model_kwargs == {"num_classes": 512, "head_bias": True}
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(build_converted(converted), x), _logits(ref, x), rtol=0, atol=1e-5)
    with pytest.raises(CheckpointError, match="projection has no bias"):
        bramley_to_official(converted.state_dict, mobileclip=True)


def test_timm_and_open_clip_layouts():
    model = create_model("fastvit_t8")
    timm_sd = bramley_to_timm(model.state_dict())
    assert convert_official(timm_sd).source == "timm"
    wrapped = {f"visual.trunk.{k}": v for k, v in timm_sd.items()} | {"text.proj": torch.zeros(1)}
    converted = convert_official(wrapped)
    assert converted.source == "open_clip" and converted.ignored == ["text.proj"]
    assert set(converted.state_dict) == set(model.state_dict())


def test_official_file_wrapper_and_cli(tmp_path, randomize):
    from bramley.core import from_pretrained
    from bramley.fastvit.cli import main

    model = randomize(create_model("fastvit_t8").eval())
    path = tmp_path / "fastvit_t8.pth.tar"
    torch.save({"epoch": 300, "state_dict": bramley_to_official(model.state_dict())}, path)
    assert set(load_official_file(path)) == set(bramley_to_official(model.state_dict()))
    assert main(["convert", str(path), "--out", str(tmp_path / "t8"), "--fuse"]) == 0
    loaded = from_pretrained(tmp_path / "t8")
    assert loaded.model_config["kwargs"]["inference_mode"] is True
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), rtol=0, atol=1e-5)


def test_bad_checkpoints_are_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_official_file(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_file(tmp_path / "missing.pth")
    official = bramley_to_official(create_model("fastvit_t8").state_dict())
    with pytest.raises(CheckpointError, match="fastvit_t8 architecture, not fastvit_t12"):
        convert_official(official, model_name="fastvit_t12")
    with pytest.raises(CheckpointError, match=r"norm0\.weight"):
        official_to_bramley({**official, "norm0.weight": torch.ones(48)})  # detection fork_feat checkpoint
    truncated = {k: v for k, v in official.items() if not k.startswith("network.6.")}
    with pytest.raises(CheckpointError, match="stage 3 of the checkpoint has no blocks"):
        convert_official(truncated)
    shallower = {k: v for k, v in official.items() if not k.startswith("network.4.3.")}  # layers 2-2-3-2
    with pytest.raises(CheckpointError, match="no registered FastViT variant"):
        convert_official(shallower)
    with pytest.raises(CheckpointError, match="no FastViT stem"):
        convert_official({"fc.weight": torch.ones(2, 2)})
