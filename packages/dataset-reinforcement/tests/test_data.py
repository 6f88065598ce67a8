import shutil

import pytest
import torch

from bramley.core.data.reinforced import ReinforcedStore, ReplayableAugment, densify
from bramley.core.errors import ConfigError, DataError
from bramley.dataset_reinforcement.data import ReinforcedDataset, raw_images
from bramley.dataset_reinforcement.reinforce import reinforce

from .conftest import AUGMENT, NUM_CLASSES, make_images


def _stored_target_and_image(dataset, store, index):
    """Which stored augmentation the item replayed: its image must be one of them, and the target its target."""
    record = ReinforcedStore(store)[index]
    augment = ReplayableAugment(AUGMENT)
    return [
        (augment.replay(dataset.images.image(index), p), densify(record["probs"][j], record["ids"][j], NUM_CLASSES))
        for j, p in enumerate(record["params"])
    ]


def test_p1_replays_a_stored_augmentation_and_its_target(store, images):
    dataset = ReinforcedDataset(images, store, p=1.0, densify="smooth")
    assert dataset.augment.config == AUGMENT  # the store's augmentations, from its manifest
    for index in range(len(images)):
        image, target = dataset[index]
        candidates = _stored_target_and_image(dataset, store, index)
        assert any(torch.equal(image, im) and torch.equal(target, t) for im, t in candidates), index
        torch.testing.assert_close(target.sum(), torch.tensor(1.0))


def test_draws_depend_on_seed_epoch_index_only(store, images):
    a, b = ReinforcedDataset(images, store, p=0.5, seed=3), ReinforcedDataset(images, store, p=0.5, seed=3)
    items = [a[i] for i in range(len(images))]
    for i in reversed(range(len(images))):  # another order, another object: the same items
        assert torch.equal(b[i][0], items[i][0]) and torch.equal(b[i][1], items[i][1])
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], items[i][0]) for i in range(len(images)))


def test_p0_never_reads_the_store_and_returns_smoothed_labels(store, images):
    for path in store.glob("shard-*"):
        path.unlink()  # any read would fail
    dataset = ReinforcedDataset(images, store, p=0.0, label_smoothing=0.1)  # the official code makes p = 0 into 1
    for index in range(len(images)):
        _, target = dataset[index]
        expected = torch.full((NUM_CLASSES,), 0.1 / NUM_CLASSES)
        expected[int(images.targets[index])] += 0.9
        torch.testing.assert_close(target, expected)
    plain = ReinforcedDataset(images, None, p=0.0, augment=AUGMENT)
    assert plain[0][0].shape == (3, 12, 12)


def test_mixed_p_uses_both_branches(store, images):
    dataset = ReinforcedDataset(images, store, p=0.5, seed=1)
    kinds = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for i in range(len(images)):
            target = dataset[i][1]
            kinds.add("onehot" if target.max() == 1.0 else "stored")
    assert kinds == {"onehot", "stored"}


def test_bad_p_and_settings(store, images):
    for p in (-0.01, 1.01, float("nan")):
        with pytest.raises(ConfigError, match="p \\(probability of a stored augmentation\\) must be in \\[0, 1\\]"):
            ReinforcedDataset(images, store, p=p)
    with pytest.raises(ConfigError, match="needs a reinforced dataset"):
        ReinforcedDataset(images, None, p=0.99)
    with pytest.raises(ConfigError, match="densify"):
        ReinforcedDataset(images, store, densify="softmax")


def test_store_from_other_data_is_refused(tmp_path, store, teacher):
    with pytest.raises(DataError, match="holds 10 samples but the dataset \\(toy\\) has 11"):
        ReinforcedDataset(make_images(11), store)
    with pytest.raises(DataError, match="was made from 'toy', not from 'other'"):
        ReinforcedDataset(make_images(description="other"), store)
    # same count and description, other image sizes: the replay names the mismatch
    dataset = ReinforcedDataset(make_images(size=(20, 20)), store, p=1.0)
    with pytest.raises(DataError, match="drawn for a \\[14, 15\\] image, not this \\[20, 20\\] image"):
        dataset[0]
    # same images, other labels
    relabelled = make_images()
    relabelled.targets = (relabelled.targets + 1) % NUM_CLASSES
    with pytest.raises(DataError, match=r"sample 0: the reinforced dataset .* has label 0, the dataset 1"):
        ReinforcedDataset(relabelled, store, p=1.0)[0]


def test_truncated_shard_is_named_and_others_train(store, images):
    path = store / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    dataset = ReinforcedDataset(images, store, p=1.0)
    dataset[0], dataset[9]  # shards 0 and 2 still serve
    with pytest.raises(DataError, match=r"shard-00001\.safetensors is truncated or corrupt"):
        dataset[5]


def test_raw_images_sources(tmp_path):
    digits = raw_images("digits", "val", image_size=8)
    assert digits.image(0).dtype == torch.uint8 and digits.image(0).shape == (3, 8, 8) and digits.num_classes == 10
    synthetic = raw_images("synthetic", "test", image_size=16, synthetic={"train_size": 64, "test_size": 8})
    assert synthetic.image(0).shape == (3, 16, 16) and len(synthetic) == 8
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.new("RGB", (9, 7), color=(10, 20, 30)).save(tmp_path / "f" / cls / "x.png")
    folder = raw_images("folder", root=tmp_path / "f")
    assert folder.classes == ("a", "b") and folder.image(1).shape == (3, 7, 9)
    with pytest.raises(ConfigError, match="needs an existing ImageFolder root"):
        raw_images("folder", root=tmp_path / "missing")
    with pytest.raises(ConfigError, match="data source must be one of"):
        raw_images("cifar")


def test_reinforce_a_folder_dataset_and_train_on_it(tmp_path, teacher):
    from PIL import Image

    for c in range(NUM_CLASSES):
        (tmp_path / "f" / f"c{c}").mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (16 + k, 13), color=(40 * c, 20 * k, 9)).save(tmp_path / "f" / f"c{c}" / f"{k}.png")
    folder = raw_images("folder", root=tmp_path / "f")
    reinforce(folder, teacher, tmp_path / "s", AUGMENT, num_augmentations=2, topk=NUM_CLASSES)
    image, target = ReinforcedDataset(folder, tmp_path / "s", p=1.0)[3]
    assert image.shape == (3, 12, 12) and target.shape == (NUM_CLASSES,)
    shutil.rmtree(tmp_path / "s")
