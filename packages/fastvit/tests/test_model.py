"""FastViT variants: timm parity (unfused and fused, timm's own fusion too), reparameterization, features, bad input,
compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from timm.utils.model import reparameterize_model as timm_reparameterize

import bramley.fastvit
from bramley.core import create_model, from_pretrained, list_models, save_pretrained
from bramley.fastvit import FASTVIT_CONFIGS, register_timm, reparameterize
from bramley.fastvit.convert import bramley_to_timm, timm_to_bramley
from bramley.fastvit.model import (
    DROP_PATH_RATES,
    Attention,
    AttentionBlock,
    ConvMlp,
    RepConditionalPosEnc,
    RepMixer,
    RepMixerBlock,
)

VARIANTS = sorted(FASTVIT_CONFIGS)
TINY_SA = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64), num_classes=5)


def test_all_variants_registered():
    assert list_models(package="fastvit") == VARIANTS
    assert len(VARIANTS) == 10


@pytest.mark.parametrize("name", VARIANTS)
def test_timm_parity_and_reparameterization(name, randomize):
    """Every real variant, built through its timm registration (``bramley_<name>``): same weights -> same logits as
    timm's ``<name>``, unfused and fused; fused == unfused; timm's ``reparameterize_model`` on our model == our
    fusion (fp32, 1e-5).

    32 px keeps the big variants cheap; attention over several tokens is covered at 64 px by the tiny-model test.
    """
    register_timm()
    model = randomize(timm.create_model(f"bramley_{name}").eval())
    with torch.device("meta"):  # skip timm's init: every tensor is replaced by ours below
        ref = timm.create_model(name)
    ref.load_state_dict(bramley_to_timm(model.state_dict()), assign=True)  # strict: every key maps
    _check_parity(model, ref.eval(), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", sorted(DROP_PATH_RATES))  # the variants with an ImageNet recipe
def test_pretrained_cfg_is_the_recipe_preprocessing(name):
    """timm's data config (``model.pretrained_cfg``) is how the variant's recipe evaluates."""
    data = yaml.safe_load((Path(bramley.fastvit.__file__).parent / "recipes" / f"{name}.yaml").read_text())["data"]
    with torch.device("meta"):
        cfg = create_model(name).pretrained_cfg
    assert cfg["input_size"] == (3, data["image_size"], data["image_size"])
    assert (cfg["crop_pct"], cfg["interpolation"]) == (data["crop_pct"], data["interpolation"])


def test_timm_registration_covers_every_variant():
    assert register_timm() == [f"bramley_{name}" for name in VARIANTS]


def test_is_reparameterized_follows_the_fusion(tiny_sa):
    assert not tiny_sa.is_reparameterized
    assert reparameterize(tiny_sa).is_reparameterized
    assert create_model("fastvit_sa12", **TINY_SA, inference_mode=True).is_reparameterized


def test_mci_head_is_bias_free():
    mci0, t8 = create_model("fastvit_mci0", num_classes=10), create_model("fastvit_t8", num_classes=10)
    assert mci0.head.fc.bias is None and t8.head.fc.bias is not None
    assert create_model("fastvit_mci0", head_bias=True).head.fc.bias is not None


def test_timm_parity_tiny_attention_over_tokens(tiny_sa):
    ref = timm.create_model("fastvit_sa12", **TINY_SA).eval()
    ref.load_state_dict(bramley_to_timm(tiny_sa.state_dict()))
    _check_parity(tiny_sa, ref, torch.randn(2, 3, 96, 80))  # 3x3 tokens in stage 4


def _check_parity(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
        # timm's traversal: top down, every module with fuse() replaced by its result (it also folds ConvFFN's
        # conv-BN, which our fusion keeps as the official fused models do)
        timm_fused = timm_reparameterize(model)
        ours_timm_fused = timm_fused(x)
        fused = reparameterize(model, inplace=True)
        ours_fused, theirs_fused = fused(x), timm_reparameterize(ref, inplace=True)(x)
    assert ours.abs().max() > 1e-3  # a non-degenerate output, so the comparisons below mean something
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours_fused - theirs_fused).abs().max() <= 1e-5
    assert (ours_fused - ours).abs().max() <= 1e-5
    assert (ours_timm_fused - ours_fused).abs().max() <= 1e-5
    assert fused.is_reparameterized and timm_fused.is_reparameterized
    assert all(type(m.conv) is nn.Conv2d for m in timm_fused.modules() if isinstance(m, ConvMlp))  # ConvNorm.fuse()
    # no train-time branch and no RepMixer/RepCPE skip connection left; BatchNorm only where the official fused
    # models keep it (ConvFFN's conv-BN, the attention pre-norm)
    kept = {id(m.norm) for m in fused.modules() if isinstance(m, AttentionBlock)}
    kept |= {id(m.conv.bn) for m in fused.modules() if isinstance(m, ConvMlp)}
    for m in fused.modules():
        if isinstance(m, (RepMixer, RepConditionalPosEnc)):
            assert m.reparam_conv is not None and len(list(m.children())) == 1
        if isinstance(m, nn.BatchNorm2d):
            assert id(m) in kept


def test_variant_structure():
    narrow = dict(embed_dims=(8, 16, 32, 64))  # the variants' layouts and flags at a fraction of the cost
    t8, sa36, mci0 = (create_model(n, **narrow) for n in ("fastvit_t8", "fastvit_sa36", "fastvit_mci0"))
    assert [len(s.blocks) for s in sa36.stages] == [6, 6, 18, 6]
    assert isinstance(sa36.stages[3].blocks[0], AttentionBlock) and isinstance(sa36.stages[2].blocks[0], RepMixerBlock)
    assert isinstance(sa36.stages[3].pos_emb, RepConditionalPosEnc)
    assert not any(isinstance(m, Attention) for m in t8.modules())
    assert float(sa36.stages[0].blocks[0].layer_scale.gamma.flatten()[0]) == pytest.approx(1e-6)  # official SA36/MA36
    assert float(t8.stages[0].blocks[0].layer_scale.gamma.flatten()[0]) == pytest.approx(1e-5)
    lkc = mci0.stages[2].downsample.proj[0]
    assert isinstance(lkc.act, nn.GELU) and not isinstance(lkc.se, nn.Identity)  # MobileCLIP: SE + applied GELU
    assert isinstance(t8.stages[1].downsample.proj[0].act, nn.Identity)  # official FastViT drops this activation
    assert mci0.num_classes == 512 and mci0.stages[0].blocks[0].mlp.fc1.out_channels == 3 * 8
    assert isinstance(t8.stages[0].downsample, nn.Identity)


def test_inference_mode_builds_the_fused_structure(tiny_sa):
    fused = reparameterize(tiny_sa)
    direct = create_model("fastvit_sa12", **TINY_SA, inference_mode=True)
    assert {k: v.shape for k, v in direct.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}


def test_fused_save_pretrained_round_trip(tiny_sa, tmp_path):
    fused = reparameterize(tiny_sa)
    assert fused.model_config["kwargs"]["inference_mode"] is True
    assert "inference_mode" not in tiny_sa.model_config["kwargs"]  # the unfused model's recipe is untouched
    save_pretrained(fused, tmp_path / "fused")
    loaded = from_pretrained(tmp_path / "fused").eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), fused(x))


@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_take_the_end_of_every_stage(tiny_sa, tmp_path, feature_cls):
    """4 features for SA models too: stage 4 after its attention blocks (the official fork_feat taps RepCPE); timm's
    default feature class and the forward_intermediates getter agree."""
    register_timm()
    save_pretrained(tiny_sa, tmp_path / "tiny")
    extractor = timm.create_model(
        "bramley_fastvit_sa12",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "tiny")),
        features_only=True,
        feature_cls=feature_cls,
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = extractor(x)
        assert [f.shape[1] for f in feats] == extractor.feature_info.channels() == [16, 32, 64, 64]
        assert extractor.feature_info.reduction() == [4, 8, 16, 32]
        assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
        h = tiny_sa.stages[:3](tiny_sa.stem(x))
        after_cpe = tiny_sa.stages[3].pos_emb(tiny_sa.stages[3].downsample(h))
        assert torch.equal(feats[3], tiny_sa.stages[3].blocks(after_cpe))
        assert not torch.allclose(feats[3], after_cpe)  # what the official indices [0, 2, 4, 6] would return
        last2 = tiny_sa.forward_intermediates(x, indices=2, intermediates_only=True)
        assert torch.equal(last2[1], feats[3])
    with pytest.raises(ValueError, match="out of range"):
        tiny_sa.forward_intermediates(x, indices=[4])


def test_timm_registration_builds_the_same_model():
    register_timm()
    model = timm.create_model("bramley_fastvit_t8")
    assert sorted(timm_to_bramley(timm.create_model("fastvit_t8").state_dict())) == sorted(model.state_dict())
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("bramley_fastvit_t8", pretrained=True)


def test_drop_path_is_linear_over_blocks_and_train_only():
    model = create_model("fastvit_sa12", **TINY_SA, drop_path_rate=0.3)
    rates = [
        getattr(b.drop_path if hasattr(b, "drop_path") else b.drop_path1, "drop_prob", 0.0)
        for s in model.stages
        for b in s.blocks
    ]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(3, 64, 64), "shape"),
        (torch.randn(1, 1, 64, 64), "3 input channels"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_input_is_named(tiny_sa, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_sa(bad)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="embed_dims has 3 entries"):
        create_model("fastvit_t8", embed_dims=(8, 16, 32))
    with pytest.raises(ValueError, match="unknown token mixer"):
        create_model("fastvit_t8", token_mixers=("repmixer", "conv", "repmixer", "repmixer"))
    with pytest.raises(ValueError, match="divisible by head_dim"):
        create_model("fastvit_sa12", embed_dims=(12, 24, 48, 48))
    with pytest.raises(ValueError, match="multiple of the previous width"):
        create_model("fastvit_t8", embed_dims=(16, 32, 64, 48))


def test_backward_reaches_every_parameter(tiny_sa):
    tiny_sa.train()
    tiny_sa(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in tiny_sa.parameters())


def test_torch_compile_tiny(tiny_sa):
    compiled = torch.compile(tiny_sa, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny_sa(x), rtol=0, atol=1e-6)
