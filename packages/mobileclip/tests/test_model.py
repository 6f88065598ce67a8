"""MobileCLIP models: equal to open_clip's MobileCLIP-S1/-S2/-B on the same random weights (unfused and fused), S0's
text tower equal to an independent float64 reference of the official definitions loaded through official key names,
reparameterization, conversion and bad input."""

from __future__ import annotations

import math

import open_clip
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import bramley.mobileclip  # noqa: F401  (registers the models)
from bramley.core import create_model
from bramley.core.errors import CheckpointError
from bramley.core.layers import reparameterize_model
from bramley.fastvit.convert import bramley_to_official as fastvit_to_official
from bramley.mobileclip.convert import bramley_to_open_clip, convert_official, open_clip_to_bramley
from bramley.mobileclip.model import MobileCLIP, TextRepMixerBlock, example_inputs

TOL = 1e-5  # fp32, on L2-normalized features


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every float tensor random (BatchNorm statistics and affine too, so fusion has something to fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif key.endswith("logit_scale"):
                value.fill_(math.log(1 / 0.07))
            else:
                value.copy_(torch.randn(value.shape, generator=g) * 0.05)
    return model.eval()


def build_random(name: str, **kwargs) -> MobileCLIP:
    """The model with random weights, built on the meta device first (no slow init of ~100M parameters)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return randomize(model.to_empty(device="cpu"))


def open_clip_twin(config: str, ours: MobileCLIP, text_layers: int | None = None, trunk: nn.Module | None = None):
    """open_clip's ``CustomTextCLIP`` for ``config`` holding ``ours``'s weights (open_clip's own classes)."""
    cfg = {k: v for k, v in open_clip.get_model_config(config).items() if k != "custom_text"}
    if text_layers is not None:
        cfg["text_cfg"] = {**cfg["text_cfg"], "layers": text_layers}
    if trunk is not None:
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "timm_model_name": "fastvit_mci0", "timm_pool": "avg"}
    with torch.device("meta"):
        ref = open_clip.CustomTextCLIP(**cfg)
    if trunk is not None:
        ref.visual.trunk = trunk
    ref.load_state_dict(bramley_to_open_clip(ours.state_dict()), assign=True)  # strict: every key maps
    if ref.text.attn_mask is not None:  # the non-persistent causal mask was built on the meta device
        ref.text.attn_mask = ref.text.build_causal_mask()
    return ref.eval()


def _check_pair(ours: MobileCLIP, ref: nn.Module, image_size: int) -> None:
    (images, tokens), _ = example_inputs(image_size)
    with torch.no_grad():
        want = ref(images, tokens)
        got = ours(images, tokens)
        fused = reparameterize_model(ours)(images, tokens)
    for name, a, b in zip(("image", "text", "scale"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=lambda m, n=name: f"unfused {n}: {m}")
    for name, a, b in zip(("image", "text", "scale"), fused, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=lambda m, n=name: f"fused {n}: {m}")


# ------------------------------------------------------------------------------------------------ open_clip parity
@pytest.mark.parametrize(("causal", "config"), [(False, "MobileCLIP-S1"), (True, "MobileCLIP-B")])
def test_open_clip_parity_small(causal, config):
    """The S and B code paths at a small size: MCi0 + 2 text blocks (bidirectional / causal), open_clip's classes."""
    with torch.device("meta"):
        ours = MobileCLIP("fastvit_mci0", text_kwargs={"layers": 2, "causal": causal})
    ours = randomize(ours.to_empty(device="cpu"))
    with torch.device("meta"):
        trunk = timm.create_model("fastvit_mci0", num_classes=512)  # what open_clip's TimmModel builds
    _check_pair(ours, open_clip_twin(config, ours, text_layers=2, trunk=trunk), 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "config", "size"),
    [
        ("mobileclip_s1", "MobileCLIP-S1", 64),
        ("mobileclip_s2", "MobileCLIP-S2", 64),
        ("mobileclip_b", "MobileCLIP-B", 224),
    ],
)
def test_open_clip_parity_full(name, config, size):
    """The released architectures, full size: equal to open_clip's within 1e-5, unfused and fused."""
    ours = build_random(name)
    _check_pair(ours, open_clip_twin(config, ours), size)


def test_open_clip_conversion_round_trip():
    ours = build_random("mobileclip_s1", text_kwargs={"layers": 1})
    theirs = bramley_to_open_clip(ours.state_dict())
    assert "visual.trunk.head.fc.bias" in theirs and not theirs["visual.trunk.head.fc.bias"].any()
    back = open_clip_to_bramley(theirs)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    theirs["visual.trunk.head.fc.bias"] = torch.ones(512)
    with pytest.raises(CheckpointError):
        open_clip_to_bramley(theirs)


# ------------------------------------------------------------------------------------------ S0 vs official facts
class OfficialText(nn.Module):
    """An independent reference of the official MobileCLIP text encoder (``mct`` and ``base``), written from its
    definitions: official module names, Conv2d (1 x k) on ``(B, C, 1, L)``, explicit softmax attention."""

    def __init__(self, dim: int, layers: int, mct: bool, vocab: int = 1000, context: int = 77, k: int = 11):
        super().__init__()
        self.embedding_layer = nn.Embedding(vocab, dim)
        self.positional_embedding = nn.Module()
        self.positional_embedding.pos_embed = nn.Module()
        self.positional_embedding.pos_embed.pos_embed = nn.Parameter(torch.randn(1, 1, context, dim))
        blocks = [self._transformer(dim) for _ in range(layers)]
        if mct:
            blocks = [self._repmixer(dim, k), *blocks, self._repmixer(dim, k)]
        self.transformer = nn.ModuleList(blocks)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.projection_layer = nn.Parameter(torch.randn(dim, 512))
        self.dim, self.k = dim, k

    @staticmethod
    def _transformer(dim: int) -> nn.Module:
        block = nn.Module()
        mha = nn.Module()
        mha.qkv_proj, mha.out_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        block.pre_norm_mha = nn.Sequential(nn.LayerNorm(dim), mha, nn.Dropout(0))
        block.pre_norm_ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0), nn.Linear(4 * dim, dim), nn.Dropout(0)
        )
        return block

    @staticmethod
    def _repmixer(dim: int, k: int) -> nn.Module:
        def conv_bn(kernel: int) -> nn.Sequential:
            seq = nn.Sequential()
            seq.add_module("conv", nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim, bias=False))
            seq.add_module("bn", nn.BatchNorm2d(dim))
            return seq

        block, mixer = nn.Module(), nn.Module()
        mixer.norm, mixer.mixer = nn.Module(), nn.Module()
        mixer.norm.rbr_skip = nn.BatchNorm2d(dim)
        mixer.mixer.rbr_skip = nn.BatchNorm2d(dim)
        mixer.mixer.rbr_conv = nn.ModuleList([conv_bn(k)])  # no rbr_scale: MobileOneBlock skips it for (1, k)
        mixer.layer_scale = nn.Parameter(torch.randn(dim, 1, 1))
        block.token_mixer = mixer
        block.convffn = nn.Module()
        block.convffn.conv = conv_bn(k)
        block.convffn.fc1, block.convffn.fc2 = nn.Conv2d(dim, 4 * dim, 1), nn.Conv2d(4 * dim, dim, 1)
        block.layer_scale = nn.Parameter(torch.randn(dim, 1, 1))
        return block

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding_layer(tokens) + self.positional_embedding.pos_embed.pos_embed[0, 0, : tokens.shape[1]]
        for block in self.transformer:
            if hasattr(block, "token_mixer"):
                y = x.transpose(1, 2).unsqueeze(2)  # (B, C, 1, L)
                m = block.token_mixer
                mixed = m.mixer.rbr_skip(y) + m.mixer.rbr_conv[0](y)
                y = y + m.layer_scale * (mixed - m.norm.rbr_skip(y))
                f = block.convffn
                y = y + block.layer_scale * f.fc2(F.gelu(f.fc1(f.conv(y))))
                x = y.squeeze(2).transpose(1, 2)
            else:
                h = block.pre_norm_mha[0](x)
                q, k, v = block.pre_norm_mha[1].qkv_proj(h).unflatten(-1, (3, 8, self.dim // 8)).unbind(2)
                att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.dim // 8)
                out = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).flatten(2)
                x = x + block.pre_norm_mha[1].out_proj(out)
                x = x + block.pre_norm_ffn(x)
        x = self.final_layer_norm(x)
        return x[torch.arange(len(x)), tokens.argmax(-1)] @ self.projection_layer


def _official_s0_state_dict(seed: int = 0) -> tuple[dict[str, torch.Tensor], OfficialText]:
    reference = randomize(OfficialText(512, 4, mct=True), seed).double()
    with torch.device("meta"):
        image = create_model("fastvit_mci0")
    image = randomize(image.to_empty(device="cpu"), seed + 1)
    state = {"logit_scale": torch.tensor(math.log(1 / 0.07))}
    state |= {f"text_encoder.{k}": v for k, v in reference.state_dict().items()}
    state |= fastvit_to_official(image.state_dict(), mobileclip=True)
    return state, reference


def test_s0_matches_the_official_definitions_through_official_keys():
    state, reference = _official_s0_state_dict()
    converted = convert_official({k: v.float() for k, v in state.items()})
    assert converted.model_name == "mobileclip_s0" and converted.model_kwargs == {}
    with torch.device("meta"):
        model = create_model("mobileclip_s0", text_kwargs={"vocab_size": 1000})
    model.load_state_dict(converted.state_dict, assign=True)  # strict: every official key has a place
    model.eval()
    (_, tokens), _ = example_inputs(64)
    with torch.no_grad():
        want = F.normalize(reference(tokens), dim=-1)
        torch.testing.assert_close(model.encode_text(tokens, normalize=True).double(), want, rtol=0, atol=TOL)
        fused = reparameterize_model(model)
        torch.testing.assert_close(fused.encode_text(tokens, normalize=True).double(), want, rtol=0, atol=TOL)
    assert isinstance(model.text.blocks[0], TextRepMixerBlock) and len(model.text.blocks) == 6
    assert model.text.blocks[0].token_mixer.conv_kxk.conv.kernel_size == (11,)  # the code's 11, not the docstring's 3


def test_fused_official_s0_converts_to_the_fused_model():
    state, _ = _official_s0_state_dict(seed=3)
    converted = convert_official({k: v.float() for k, v in state.items()})
    with torch.device("meta"):
        model = create_model("mobileclip_s0", text_kwargs={"vocab_size": 1000})
    model.load_state_dict(converted.state_dict, assign=True)
    fused = reparameterize_model(model.eval())
    official_fused = {k: v for k, v in state.items() if not k.startswith("text_encoder.transformer.0.token_mixer.")}
    official_fused = {
        k: v for k, v in official_fused.items() if not k.startswith("text_encoder.transformer.5.token_mixer.")
    }
    official_fused = {k: v for k, v in official_fused.items() if not k.startswith("image_encoder.")}
    for i in (0, 5):
        conv = fused.text.blocks[i].token_mixer.reparam_conv
        official_fused[f"text_encoder.transformer.{i}.token_mixer.reparam_conv.weight"] = conv.weight.unsqueeze(2)
        official_fused[f"text_encoder.transformer.{i}.token_mixer.reparam_conv.bias"] = conv.bias
    official_fused |= fastvit_to_official(fused.visual.state_dict(), mobileclip=True)
    converted = convert_official(official_fused)
    assert converted.model_kwargs == {"inference_mode": True}
    rebuilt = create_model("mobileclip_s0", text_kwargs={"vocab_size": 1000}, inference_mode=True)
    rebuilt.load_state_dict(converted.state_dict)
    (images, tokens), _ = example_inputs(64)
    with torch.no_grad():
        for a, b in zip(rebuilt.eval()(images, tokens), fused(images, tokens), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- bad input
def test_convert_refuses_what_is_not_mobileclip():
    with pytest.raises(CheckpointError, match="not a MobileCLIP checkpoint"):
        convert_official({"fc.weight": torch.zeros(2, 2)})
    state, _ = _official_s0_state_dict()
    state["text_encoder.transformer.0.token_mixer.mixer.rbr_conv.1.conv.weight"] = torch.zeros(512, 1, 1, 11)
    with pytest.raises(CheckpointError, match="not part of an official MobileCLIP text encoder"):
        convert_official(state)
    with pytest.raises(CheckpointError, match="holds a mobileclip_s0 architecture, not mobileclip_s1"):
        convert_official(_official_s0_state_dict()[0], model_name="mobileclip_s1")


def test_unknown_towers_and_long_text():
    with pytest.raises(ValueError, match="unknown image tower"):
        MobileCLIP(image_tower="resnet50")
    with pytest.raises(ValueError, match="unknown text tower"):
        MobileCLIP(text_tower="lstm")
    model = create_model("mobileclip_s0", text_kwargs={"layers": 1, "context_length": 8}).eval()
    with pytest.raises(ValueError, match="9 positions; this text tower takes 1 to 8"):
        model.encode_text(torch.ones(1, 9, dtype=torch.long))
