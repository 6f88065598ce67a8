"""Recipes (every bundled one loads with the paper's numbers), hard distillation on core's classification loss."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bramley.core import create_model, save_pretrained
from bramley.core.classification import ClassificationLoss
from bramley.core.errors import ConfigError
from bramley.core.recipe import load_recipe
from bramley.fastvit.cli import main
from bramley.fastvit.train import SCHEMA, FastVitLoss, HardDistillationLoss, build_teacher

RECIPES = sorted(p.stem for p in Path(str(files("bramley.fastvit") / "recipes")).glob("*.yaml"))
PAPER = [name for name in RECIPES if name != "smoke"]
# per variant (official README commands + default_cfgs): drop path, eval crop, mixup
VARIANTS = {
    "fastvit_t8": (0.0, 0.9, 0.2),
    "fastvit_t12": (0.0, 0.9, 0.2),
    "fastvit_s12": (0.0, 0.9, 0.2),
    "fastvit_sa12": (0.1, 0.9, 0.2),
    "fastvit_sa24": (0.1, 0.9, 0.2),
    "fastvit_sa36": (0.2, 0.95, 0.2),
    "fastvit_ma36": (0.35, 0.95, 0.8),
}
# the smoke recipe, shrunk further for the distillation runs below (a few steps)
FEW_STEPS = ["train.steps=2", "train.progress=false", "train.ema_decay=null"]


def test_every_variant_has_its_paper_recipe():
    assert sorted(VARIANTS) == PAPER and "smoke" in RECIPES


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_keep_the_paper_hyperparameters(name):
    recipe = load_recipe(SCHEMA, name)
    drop_path, crop_pct, mixup = VARIANTS[name]
    assert recipe.model.name == name and recipe.model.kwargs == {"drop_path_rate": drop_path}
    data, loss, optim, train = recipe.data, recipe.loss, recipe.optim, recipe.train
    assert (data.source, data.train, data.val, data.image_size, data.crop_pct) == ("folder", None, None, 256, crop_pct)
    assert (data.interpolation, data.auto_augment, data.random_erasing) == ("bicubic", "rand-m9-mstd0.5-inc1", 0.25)
    assert (loss.label_smoothing, loss.mixup, loss.cutmix, loss.distillation.type) == (0.1, mixup, 1.0, "none")
    assert loss.distillation.alpha == 0.5
    assert (optim.optimizer, optim.lr, optim.weight_decay, optim.schedule) == ("adamw", 1e-3, 0.05, "cosine")
    assert (optim.warmup_epochs, optim.warmup_start_factor, optim.min_lr_ratio) == (5, 1e-3, 1e-2)
    assert (train.epochs, train.batch_size, train.ema_decay, train.amp) == (300, 128, 0.9995, "auto")
    assert (train.num_workers, train.checkpoint_every) == (8, 1000)


def test_default_recipe_is_fastvit_t8():
    assert load_recipe(SCHEMA).model.name == "fastvit_t8"


def test_smoke_recipe_uses_bundled_data():
    recipe = load_recipe(SCHEMA, "smoke")
    assert recipe.data.source == "digits" and recipe.train.epochs == 1


def _distill(tmp_path: Path, *extra: str) -> int:
    return main(["train", "--recipe", "smoke", "--out", str(tmp_path / "run"), *FEW_STEPS, *extra])


def test_train_with_hard_distillation(tmp_path):
    teacher = create_model("fastvit_t8", num_classes=10, layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64))
    save_pretrained(teacher, tmp_path / "teacher")
    assert _distill(tmp_path, "loss.distillation.type=hard", f"loss.distillation.teacher={tmp_path / 'teacher'}") == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_distill_loss" in m and "train_base_loss" in m for m in metrics)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_classes"] == 10 and "eval_top1" in results["metrics"]


def test_distillation_with_a_timm_teacher_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    teacher = timm.create_model("resnet10t", num_classes=10)
    save_file(teacher.state_dict(), tmp_path / "resnet10t.safetensors")
    args = ["loss.distillation.type=hard", "loss.distillation.teacher_timm=resnet10t"]
    assert _distill(tmp_path, *args, f"loss.distillation.teacher_checkpoint={tmp_path / 'resnet10t.safetensors'}") == 0


def test_distillation_sees_the_mixed_images():
    """The teacher labels exactly what the student saw: mixup/cutmix output, not the clean batch."""
    seen = []

    class Teacher(nn.Module):
        num_classes = 10

        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 10)

    loss_section = FastVitLoss(mixup=0.8, cutmix=1.0)
    loss_fn = HardDistillationLoss(10, loss_section, Teacher())
    student = create_model("fastvit_t8", num_classes=10, layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64)).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    np.random.seed(0)  # timm's Mixup draws its mode and lambda from numpy
    total, stats = loss_fn(student, (images.clone(), labels))  # timm mixes in place
    np.random.seed(0)
    base, _ = ClassificationLoss(10, loss_section)(student, (images.clone(), labels))
    assert not torch.equal(seen[0], images)  # mixed
    expected = 0.5 * stats["base_loss"] + 0.5 * stats["distill_loss"]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(stats["base_loss"], base.detach())
    assert set(stats) == {"acc", "base_loss", "distill_loss"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.distillation.type=hard"], "needs loss.distillation.teacher or .teacher_timm"),
        (["loss.distillation.type=soft"], "loss.distillation.type' must be one of 'none' | 'hard'"),
        (["loss.distillation.alpha=1.5"], r"loss.distillation.alpha must be in \[0, 1\]"),
        (
            ["loss.distillation.type=hard", "loss.distillation.teacher_timm=resnet10t"],
            "needs loss.distillation.teacher_checkpoint",
        ),
    ],
)
def test_bad_distillation_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_teacher(load_recipe(SCHEMA, "smoke", overrides).loss.distillation)


def test_teacher_with_other_classes_is_refused(tmp_path, capsys):
    teacher = create_model("fastvit_t8", num_classes=3, layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64))
    save_pretrained(teacher, tmp_path / "teacher")
    assert _distill(tmp_path, "loss.distillation.type=hard", f"loss.distillation.teacher={tmp_path / 'teacher'}") == 2
    assert "the teacher predicts 3 classes, the training data has 10" in capsys.readouterr().err
