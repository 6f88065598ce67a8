"""The corenet converter on state dicts with corenet's key names and shapes, made here (no download)."""

import pytest
import torch

from bramley.byteformer.cli import main
from bramley.byteformer.convert import bramley_to_official, convert_official
from bramley.byteformer.model import ByteFormer, TokenMerging
from bramley.core.checkpoint import load_model
from bramley.core.convert import build_converted
from bramley.core.errors import CheckpointError
from bramley.core.packing import cu_seqlens_from_lengths


def corenet_state_dict(
    dim: int = 192, depth: int = 4, kernel: int = 8, tokens: int = 300, classes: int = 7, merged=(0, 1, 3)
) -> dict[str, torch.Tensor]:
    """Random tensors under corenet ByteFormer's parameter names and shapes (``mode`` by width, MLP ratio 4)."""
    shapes = {
        "embeddings.weight": (257, dim),
        "token_reduction_net.weight": (dim, dim, kernel),
        "pos_embed.pos_embed.pos_embed": (1, 1, tokens, dim),
        "post_transformer_norm.weight": (dim,),
        "post_transformer_norm.bias": (dim,),
        "classifier.weight": (classes, dim),
        "classifier.bias": (classes,),
    }
    for i in range(depth):
        block = f"transformer.{i}."
        shapes |= {
            block + "pre_norm_mha.0.weight": (dim,),
            block + "pre_norm_mha.0.bias": (dim,),
            block + "pre_norm_mha.1.qkv_proj.weight": (3 * dim, dim),
            block + "pre_norm_mha.1.qkv_proj.bias": (3 * dim,),
            block + "pre_norm_mha.1.out_proj.weight": (dim, dim),
            block + "pre_norm_mha.1.out_proj.bias": (dim,),
            block + "pre_norm_ffn.0.weight": (dim,),
            block + "pre_norm_ffn.0.bias": (dim,),
            block + "pre_norm_ffn.1.weight": (4 * dim, dim),
            block + "pre_norm_ffn.1.bias": (4 * dim,),
            block + "pre_norm_ffn.4.weight": (dim, 4 * dim),
            block + "pre_norm_ffn.4.bias": (dim,),
        }
    for i in merged:
        shapes |= {
            f"downsamplers.downsample_{i}.reduction.weight": (dim, 2 * dim),
            f"downsamplers.downsample_{i}.norm.weight": (dim,),
            f"downsamplers.downsample_{i}.norm.bias": (dim,),
        }
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    state["embeddings.weight"][-1] = 0  # corenet's padding_idx row
    return state


def test_same_weights_in_equal_tensors_out_and_round_trip():
    official = corenet_state_dict()
    converted = convert_official(official)
    assert converted.model_name == "byteformer_tiny" and converted.source == "corenet"
    assert converted.model_kwargs == {
        "num_classes": 7,
        "depth": 4,
        "num_heads": 3,
        "conv_kernel_size": 8,
        "window_sizes": [128],
        "window_shifts": [0, 64, 0, 64],
        "downsample": [True, True, False, True],
        "max_num_tokens": 300,
    }
    ours = converted.state_dict
    same = {
        "embeddings.weight": "embeddings.weight",
        "token_reduction.weight": "token_reduction_net.weight",
        "blocks.2.norm1.bias": "transformer.2.pre_norm_mha.0.bias",
        "blocks.2.attn.qkv.weight": "transformer.2.pre_norm_mha.1.qkv_proj.weight",
        "blocks.2.attn.proj.bias": "transformer.2.pre_norm_mha.1.out_proj.bias",
        "blocks.3.norm2.weight": "transformer.3.pre_norm_ffn.0.weight",
        "blocks.3.mlp.fc1.weight": "transformer.3.pre_norm_ffn.1.weight",
        "blocks.3.mlp.fc2.bias": "transformer.3.pre_norm_ffn.4.bias",
        "downsamplers.3.norm.weight": "downsamplers.downsample_3.norm.weight",
        "norm.bias": "post_transformer_norm.bias",
        "head.weight": "classifier.weight",
    }
    for key, official_key in same.items():
        torch.testing.assert_close(ours[key], official[official_key], rtol=0, atol=0)
    torch.testing.assert_close(ours["pos_embed"], official["pos_embed.pos_embed.pos_embed"][0, 0], rtol=0, atol=0)
    model = build_converted(converted)  # strict load: every tensor has a place, every parameter a tensor
    assert isinstance(model, ByteFormer) and len(ours) == len(official)
    back = bramley_to_official(model.state_dict())
    assert back.keys() == official.keys()
    for key in official:
        torch.testing.assert_close(back[key], official[key], rtol=0, atol=0)


def test_token_merging_pairs_match_corenet_layout():
    """corenet merges a pair as ``x.unfold(1, 2, 2)``: channel-major ``[x[2i, c], x[2i+1, c]]`` before the Linear."""
    official = corenet_state_dict(dim=192, depth=1, merged=(0,))
    weight = official["downsamplers.downsample_0.reduction.weight"]
    x = torch.randn(1, 6, 192)
    corenet = x.unfold(1, 2, 2).reshape(1, 3, 2 * 192) @ weight.T
    merging = TokenMerging(192)
    merging.reduction.weight.data = convert_official(official).state_dict["downsamplers.0.reduction.weight"]
    ours = merging.reduction(torch.cat([x[0, 0::2], x[0, 1::2]], dim=-1))  # bramley's [x[2i], x[2i+1]]
    torch.testing.assert_close(ours, corenet[0])
    merged, cu = merging(x[0], cu_seqlens_from_lengths([6]))
    torch.testing.assert_close(merged, torch.nn.functional.layer_norm(corenet[0], (192,)), rtol=1e-4, atol=1e-4)
    assert cu.tolist() == [0, 3]


def test_variants_windows_and_refusals():
    small = convert_official(corenet_state_dict(dim=384, depth=2, merged=()), "byteformer_small", window_size=32)
    assert small.model_name == "byteformer_small" and small.model_kwargs["num_heads"] == 6
    assert small.model_kwargs["window_shifts"] == [0, 0], "a shift of 64 on windows of 32 is no shift"
    assert small.model_kwargs["downsample"] == [False, False]
    with pytest.raises(
        CheckpointError, match="the checkpoint is a byteformer_tiny \\(width 192\\), not byteformer_base"
    ):
        convert_official(corenet_state_dict(depth=1, merged=()), "byteformer_base")
    with pytest.raises(CheckpointError, match="width 1280 has no bramley variant"):
        convert_official(corenet_state_dict(dim=1280, depth=1, merged=()))
    with pytest.raises(CheckpointError, match=r"not a corenet ByteFormer checkpoint: no 'embeddings\.weight'"):
        convert_official({"head.weight": torch.zeros(2, 2)})
    extra = corenet_state_dict(depth=1, merged=()) | {"neural_augmentor.w": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"keys that corenet's ByteFormer does not have: neural_augmentor\.w"):
        convert_official(extra)


def test_convert_command(tmp_path, capsys):
    official = corenet_state_dict(depth=2, merged=(0,))
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in official.items()}}, tmp_path / "imagenet_tiff.pt")
    argv = ["convert", str(tmp_path / "imagenet_tiff.pt"), "--out", str(tmp_path / "bf"), "--window-size", "64"]
    assert main(argv) == 0
    assert "byteformer_tiny" in capsys.readouterr().out
    model = load_model(tmp_path / "bf")
    assert model.blocks[1].window == 64 and model.blocks[1].shift == 0
    torch.testing.assert_close(model.head.weight, official["classifier.weight"])
    tokens = torch.randint(0, 256, (90,))
    assert model(tokens, torch.tensor([0, 40, 90], dtype=torch.int32)).shape == (2, 7)
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    for source, message in [
        ("foreign.pt", "is not a readable PyTorch checkpoint"),
        ("other.pt", "not a corenet ByteFormer checkpoint"),
        ("absent.pt", "absent.pt does not exist"),
    ]:
        assert main(["convert", str(tmp_path / source), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (
        main(
            ["convert", str(tmp_path / "imagenet_tiff.pt"), "--out", str(tmp_path / "x"), "--model", "byteformer_base"]
        )
        == 2
    )
    assert "not byteformer_base" in capsys.readouterr().err
