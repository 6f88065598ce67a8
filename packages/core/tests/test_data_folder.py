import pytest
import torch
from PIL import Image

from bramley.core.data import ImageFolder, eval_transform, image_folder_splits, train_transform


def test_image_folder_train_and_eval(image_folder):
    train = ImageFolder(image_folder, train=True, image_size=16)
    assert train.classes == ["cat", "dog", "fox"] and len(train) == 12
    x, y = train[5]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    val = ImageFolder(image_folder, image_size=(12, 16), crop_pct=0.9)
    x, y = val[0]
    assert x.shape == (3, 12, 16) and y == 0
    assert torch.equal(val[0][0], val[0][0])  # eval transform is deterministic


def test_class_colour_survives_normalisation(image_folder):
    val = ImageFolder(image_folder, image_size=16, crop_pct=1.0)
    for index in (0, 4, 8):  # class c has channel c saturated at 255
        x, y = val[index]
        assert x.mean(dim=(1, 2)).argmax().item() == y


def test_eval_transform_resize_then_center_crop():
    image = Image.new("RGB", (200, 100))
    out = eval_transform(64, crop_pct=0.5)(image)  # shorter side -> 128, then 64x64 center crop
    assert out.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(64, crop_pct=0)


@pytest.mark.parametrize("aa", ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "trivialaugment"])
def test_auto_augment_variants(image_folder, aa):
    ds = ImageFolder(image_folder, train=True, image_size=16, auto_augment=aa)
    assert ds[0][0].shape == (3, 16, 16)


def test_unknown_auto_augment():
    with pytest.raises(ValueError, match="auto_augment"):
        train_transform(16, auto_augment="magic")


def test_missing_empty_and_bad_folders(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        ImageFolder(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolder(empty)
    (empty / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):  # torchvision's message, prefixed with the root
        ImageFolder(empty)
    (image_folder / "wolf").mkdir()
    with pytest.raises(FileNotFoundError, match="wolf"):
        ImageFolder(image_folder)


def test_image_folder_splits(tmp_path, image_folder):
    root = image_folder.parent
    image_folder.rename(root / "train")
    (root / "val").mkdir()
    for cls in ("cat", "dog"):
        (root / "val" / cls).mkdir()
        Image.new("RGB", (10, 10)).save(root / "val" / cls / "0.png")
    with pytest.raises(ValueError, match="only in train \\['fox'\\]"):
        image_folder_splits(root, image_size=8)
    (root / "val" / "fox").mkdir()
    Image.new("RGB", (10, 10)).save(root / "val" / "fox" / "0.png")
    splits = image_folder_splits(root, image_size=8)
    assert splits["train"].train and not splits["val"].train and len(splits["val"]) == 3
