"""bramley.core.classification: the data and loss sections, datasets from a recipe, the loss, the evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.classification import (
    ClassificationLoss,
    ImageData,
    LossSection,
    MultiScale,
    accuracy_eval,
    build_image_datasets,
    evaluate_image_folder,
    num_classes_of,
)
from bramley.core.errors import ConfigError, DataError


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ImageData(image_size=0), "data.image_size must be >= 1, got 0"),
        (lambda: ImageData(crop_pct=0.0), r"data.crop_pct must be in \(0, 1\], got 0.0"),
        (lambda: ImageData(random_erasing=1.5), r"data.random_erasing must be in \[0, 1\], got 1.5"),
        (lambda: LossSection(label_smoothing=1.0), r"loss.label_smoothing must be in \[0, 1\), got 1.0"),
        (lambda: LossSection(mixup=-0.1), "loss.mixup and loss.cutmix must be >= 0"),
    ],
)
def test_sections_check_their_ranges(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_folder_datasets_from_a_recipe_section(image_folder):
    data = ImageData(train=str(image_folder), val=str(image_folder), image_size=16, crop_pct=0.9)
    train, val, sampler, collate = build_image_datasets(data, seed=0, batch_size=4)
    assert sampler is None and collate is None
    assert num_classes_of(train) == 3 and train.classes == val.classes == ["cat", "dog", "fox"]
    image, label = train[0]
    assert image.shape == (3, 16, 16) and label == 0
    assert val[5][0].shape == (3, 16, 16)


def test_multiscale_datasets_shard_by_scale(image_folder):
    data = ImageData(
        train=str(image_folder), image_size=16, multiscale=MultiScale(enabled=True, min_size=8, max_size=24)
    )
    train, val, sampler, collate = build_image_datasets(data, seed=0, batch_size=4)
    assert val is None and collate is not None
    assert num_classes_of(train) == 3 and train.classes == ["cat", "dog", "fox"], "the wrapper shows the classes"
    sampler.set_epoch(0)
    batch = next(iter(sampler))
    images, labels = collate([train[key] for key in batch])
    _, height, width = batch[0]
    assert images.shape[-2:] == (height, width) and len(labels) == len(batch)


def test_bundled_sources_need_no_files():
    train, _, sampler, _ = build_image_datasets(ImageData(source="digits", image_size=12), seed=1, batch_size=8)
    assert sampler is None and num_classes_of(train) == 10 and train[0][0].shape == (3, 12, 12)
    photos, _, _, _ = build_image_datasets(ImageData(source="photos", image_size=16), seed=0, batch_size=8)
    assert num_classes_of(photos) == 8 and photos[0][0].shape == (3, 16, 16)


def test_data_errors(image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train is not set"):
        build_image_datasets(ImageData(), seed=0, batch_size=4)
    with pytest.raises(ConfigError, match=r"data\.multiscale needs data\.source=folder"):
        build_image_datasets(ImageData(source="digits", multiscale=MultiScale(enabled=True)), seed=0, batch_size=4)
    other = tmp_path / "other"
    (other / "cat").mkdir(parents=True)
    (image_folder / "cat" / "0.png").rename(other / "cat" / "0.png")
    with pytest.raises(DataError, match=r"train and val have different classes: \['cat', 'dog', 'fox'\] vs \['cat'\]"):
        build_image_datasets(ImageData(train=str(image_folder), val=str(other)), seed=0, batch_size=4)


def test_loss_is_label_smoothed_cross_entropy_and_reports_accuracy():
    model = nn.Linear(5, 3)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, extras = ClassificationLoss(3, LossSection(label_smoothing=0.2), forward=lambda m, b: (m(b[0]), b[1]))(
        model, (x, y)
    )
    logits = model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.2))
    assert float(extras["acc"]) == float((logits.argmax(1) == y).float().mean())


def test_mixup_mixes_training_batches_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    loss_fn = ClassificationLoss(4, LossSection(label_smoothing=0.0, mixup=1.0))
    images, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    model.train()
    mixed_loss, _ = loss_fn(model, (images, labels))
    model.eval()
    plain_loss, _ = loss_fn(model, (images, labels))
    torch.testing.assert_close(plain_loss, F.cross_entropy(model(images), labels))
    assert not torch.isclose(mixed_loss, plain_loss), "training batches are mixed"
    model.train()
    with pytest.raises(DataError, match="mixup/cutmix need an even batch size, got 3"):
        loss_fn(model, (images[:3], labels[:3]))


def test_accuracy_eval_with_a_package_forward():
    """A package with packed batches gives its own forward; top-1 / top-5 in percent."""
    weight = torch.eye(6)
    forward = lambda model, batch: (batch[0] @ weight, batch[1])  # noqa: E731
    x = torch.eye(6)[[0, 1, 2, 3]]
    loader = [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([2, 0]))]
    metrics = accuracy_eval(forward)(nn.Identity(), loader)
    assert metrics["top1"] == 75.0 and metrics["top5"] == 100.0, "the miss is within the top five of six classes"


def test_num_classes_of_every_kind_of_dataset():
    class Targets(torch.utils.data.Dataset):
        def __init__(self):
            self.targets = [0, 4, 2]

    class Nothing(torch.utils.data.Dataset):
        pass

    assert num_classes_of(Targets()) == 5
    with pytest.raises(DataError, match="cannot tell the number of classes of Nothing"):
        num_classes_of(Nothing())


def test_evaluate_image_folder_runs_convolutions_channels_last(image_folder):
    """The same metrics as the NCHW model, computed with channels_last weights, and the model handed back as it was."""
    from bramley.core.data import ImageFolder

    torch.manual_seed(0)
    layers_ = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)]
    model = nn.Sequential(*layers_)
    data = ImageFolder(image_folder, image_size=16, crop_pct=1.0)
    expected = accuracy_eval()(model.eval(), torch.utils.data.DataLoader(data, batch_size=5))
    layouts = []  # the conv weight's layout at every forward of the evaluation
    model[0].register_forward_pre_hook(lambda m, args: layouts.append(m.weight.is_contiguous()))
    metrics = evaluate_image_folder(model, image_folder, image_size=16, crop_pct=1.0, batch_size=5)
    assert layouts == [False] * 3  # 12 images in batches of 5, each with the channels_last weight
    assert metrics["top1"] == expected["top1"] and metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert model[0].weight.is_contiguous()  # handed back as it came
