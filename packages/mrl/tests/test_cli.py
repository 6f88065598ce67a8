"""The CLI end to end on tiny data: train (the paper recipe at toy scale) -> eval -> embed -> retrieve; bench."""

import json

import pytest
import torch

from bramley.mrl.cli import main

TINY = [
    "model.backbone=test_resnet",
    "data.image_size=32",
    "data.val_image_size=32",
    "train.epochs=1",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.amp=none",
    "train.progress=false",
    "train.checkpoint_every=0",
    "train.warmup_epochs=0",
]


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "bramley-mrl" in out
    for cmd in ("train", "eval", "embed", "retrieve", "bench", "reproduce"):
        assert cmd in out


def test_train_recipe_then_eval_embed_retrieve(image_folder, tmp_path):
    """The ImageNet recipe shrunk to a tiny timm model on the 3-class image folder, then every downstream command."""
    images, out = image_folder, tmp_path / "run"
    train = ["train", "--recipe", "imagenet_resnet50", "--out", str(out), f"data.train={images}", f"data.val={images}"]
    assert main([*train, *TINY]) == 0
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["classes"] == ["cat", "dog", "fox"]
    assert {f"eval_top1_{m}" for m in (8, 16, 32, 64, 96)} <= set(summary["metrics"])
    config = (out / "config.yaml").read_text()
    assert "lr: 0.425" in config and "label_smoothing: 0.1" in config  # the paper's recipe, resolved and saved

    ckpt = out / "model.safetensors"
    image_args = ["--checkpoint", str(ckpt), "--data", str(images), "--image-size", "32"]
    assert main(["eval", *image_args, "--out", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert set(metrics) == {f"top1_{m}" for m in (8, 16, 32, 64, 96)}
    emb = tmp_path / "emb.safetensors"
    assert main(["embed", *image_args, "--out", str(emb)]) == 0
    from bramley.mrl import load_embeddings

    f = load_embeddings(emb)
    assert f.embeddings.shape == (12, 96) and f.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert f.metadata["classes"] == ["cat", "dog", "fox"] and f.metadata["nesting"] == [8, 16, 32, 64, 96]

    result = tmp_path / "r.json"
    args = ["retrieve", "--index", str(emb), "--queries", str(emb), "--out", str(result)]
    neighbors = tmp_path / "nn.safetensors"
    assert main([*args, "--dim", "16", "--k", "5", "--ks", "1", "5", "--neighbors", str(neighbors)]) == 0
    exact = json.loads(result.read_text())
    assert exact["metrics"]["top1"] == 100.0  # every query finds itself
    assert exact["mflops_per_query"] == pytest.approx(12 * 16 / 1e6)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(neighbors))["indices"][:, 0], torch.arange(12))
    assert main([*args, "--retrieval-dim", "8", "--rerank-dims", "32", "96", "--shortlists", "10", "5"]) == 0
    funnel = json.loads(result.read_text())
    assert funnel["search"]["mode"] == "funnel" and "mAP@5" in funnel["metrics"]
    assert main([*args, "--backend", "faiss", "--dim", "96", "--k", "3", "--ks", "1"]) == 0


def test_retrieve_rejects_mismatched_dims(tmp_path):
    from bramley.mrl import save_embeddings

    save_embeddings(tmp_path / "a.safetensors", torch.randn(5, 16))
    save_embeddings(tmp_path / "b.safetensors", torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"16-dim embeddings but queries .* 8-dim"):
        main(["retrieve", "--index", str(tmp_path / "a.safetensors"), "--queries", str(tmp_path / "b.safetensors")])


def test_bad_recipe_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "no_such_recipe", "--out", str(tmp_path)])
    assert "unknown recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path)])
    assert "data.train" in capsys.readouterr().err
