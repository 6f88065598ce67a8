"""Procedural images and composed scenes: determinism, leak-free splits, the long tail, boxes, relations, knobs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bramley.core.data import (
    COLORS,
    SHAPES,
    Relation,
    SceneConfig,
    SceneDataset,
    SceneObject,
    SyntheticConfig,
    SyntheticDataset,
    collate_scenes,
    scene_relations,
    synthetic_splits,
    synthetic_tensors,
)
from bramley.core.data.synthetic import ObjectSpec, class_frequencies, mask_box, object_layer, place
from bramley.core.errors import ConfigError
from shared.markdown import has_table_row

CORE = Path(__file__).resolve().parents[1]
SMALL = {"train_size": 40, "val_size": 16, "test_size": 16, "shapes": ("circle", "square"), "colors": ("red", "blue")}


def test_items_depend_only_on_seed_split_and_index():
    a = SyntheticDataset("train", seed=3, **SMALL)
    b = SyntheticDataset("train", seed=3, **SMALL)
    forward = [a[i][0] for i in range(len(a))]
    backward = [b[i][0] for i in reversed(range(len(b)))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x, y)
    x, y = a.tensors()
    assert torch.equal(x, torch.stack(forward)) and torch.equal(y, a.targets)
    other = SyntheticDataset("train", seed=4, **SMALL)
    assert not torch.equal(other.tensors()[0], x)


def test_items_are_the_same_with_dataloader_workers():
    data = SyntheticDataset("val", seed=1, **SMALL)
    loaded = torch.cat([x for x, _ in DataLoader(data, batch_size=4, num_workers=2, shuffle=False)])
    assert torch.equal(loaded, data.tensors()[0])


def test_images_are_rgb_in_unit_range_and_labels_match_classes():
    data = SyntheticDataset("test", seed=0, image_size=24, **SMALL)
    x, label = data[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert isinstance(label, int) and data.classes[label] == data.classes[int(data.targets[0])]
    assert data.num_classes == 2 * 2 * 2 * 2 == len(data.classes) == len(set(data.classes))
    assert data.classes[data.config.attributes.index(dict(shape="square", color="blue", texture="striped", count=2))]
    assert "2 blue striped squares" in data.classes and "1 red solid circle" in data.classes


def test_splits_are_disjoint_and_val_test_balanced():
    splits = synthetic_splits(seed=0, **SMALL)
    assert {k: len(v) for k, v in splits.items()} == {"train": 40, "val": 16, "test": 16}
    seen = {name: {x.numpy().tobytes() for x in d.tensors()[0]} for name, d in splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    for name in ("val", "test"):
        assert torch.bincount(splits[name].targets, minlength=16).tolist() == [1] * 16


def test_train_split_is_long_tailed_with_the_requested_ratio():
    config = SyntheticConfig(train_size=2000, imbalance=10.0)
    counts = class_frequencies(config, seed=0, split="train")
    assert counts.sum() == 2000 and counts.min() >= 1
    assert 8.5 <= counts.max() / counts.min() <= 11.5
    assert not np.array_equal(np.argsort(counts), np.argsort(class_frequencies(config, seed=1, split="train")))
    balanced = class_frequencies(SyntheticConfig(imbalance=1.0, train_size=640), seed=0, split="train")
    assert balanced.tolist() == [10] * 64
    targets = SyntheticDataset("train", config=config).targets
    assert torch.bincount(targets, minlength=64).tolist() == counts.tolist()


def test_normalize_uses_training_statistics():
    train = SyntheticDataset("train", seed=0, normalize=True, **SMALL)  # 40 images: all of them give the statistics
    x = train.tensors()[0]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    raw_train = SyntheticDataset("train", seed=0, **SMALL).tensors()[0]
    mean, std = raw_train.mean(dim=(0, 2, 3)).view(1, 3, 1, 1), raw_train.std(dim=(0, 2, 3)).view(1, 3, 1, 1)
    test = SyntheticDataset("test", seed=0, normalize=True, **SMALL)
    raw_test = SyntheticDataset("test", seed=0, **SMALL).tensors()[0]
    torch.testing.assert_close(test.tensors()[0], (raw_test - mean) / std)
    assert torch.equal(test.tensors()[0][3], test[3][0])


def test_shortcuts_and_transform():
    x, y = synthetic_tensors("val", seed=0, **SMALL)
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    flipped = SyntheticDataset("val", seed=0, transform=lambda t: t.flip(-1), **SMALL)
    assert torch.equal(flipped[0][0], x[0].flip(-1))


@pytest.mark.parametrize(
    "knobs, match",
    [
        ({"shapes": ("circle", "blob")}, "unknown \\['blob'\\]"),
        ({"colors": ()}, "colors"),
        ({"counts": (0, 1)}, "counts"),
        ({"occlusion": 1.5}, "occlusion"),
        ({"imbalance": 0.5}, "imbalance"),
        ({"image_size": 4}, "image_size"),
        ({"train_size": 10}, "train_size 10 < 64 classes"),
        ({"colour": "red"}, "unknown SyntheticConfig field"),
    ],
)
def test_bad_knobs_name_the_problem(knobs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticDataset("train", **knobs)


def test_bad_split_and_index():
    with pytest.raises(ConfigError, match="split"):
        SyntheticDataset("dev")
    with pytest.raises(IndexError, match="out of range"):
        SyntheticDataset("val", **SMALL).render(16)


def test_knobs_change_the_images():
    base = dict(SMALL, clutter=0, occlusion=0.0, noise=0.0, color_jitter=0.0, scale_jitter=0.0, rotation=0.0)
    clean = SyntheticDataset("val", seed=0, position_jitter=0.0, counts=(1,), **base)
    x, _ = clean[0]
    # one centered object: the image is symmetric about the vertical axis up to the background gradient
    assert (x - x.flip(-1)).abs().mean() < (SyntheticDataset("val", seed=0, counts=(1,), **base)[0][0]).std()
    for knob, value in (("clutter", 6), ("occlusion", 0.5), ("noise", 0.2), ("rotation", 90.0)):
        changed = SyntheticDataset("val", seed=0, position_jitter=0.0, counts=(1,), **{**base, knob: value})
        assert not torch.equal(changed[0][0], x), knob


def test_every_shape_renders_inside_its_disc_with_the_right_area():
    size = 64
    for shape in SHAPES:
        alpha, rgb = object_layer(ObjectSpec(shape, "red", "solid", 0.5, 0.5, 0.4), size)
        left, top, right, bottom = mask_box(alpha)
        assert 0.1 - 1 / size <= left < right <= 0.9 + 1 / size and 0.1 - 1 / size <= top < bottom <= 0.9 + 1 / size
        assert 0.15 < alpha.sum() / (math.pi * (0.4 * size) ** 2) < 1.0, shape
        assert np.allclose(rgb[32, 32], COLORS["red"]) or shape == "ring"
    circle, _ = object_layer(ObjectSpec("circle", "red", "solid", 0.5, 0.5, 0.25), 200)
    assert abs(circle.sum() / (math.pi * (0.9 * 0.25 * 200) ** 2) - 1) < 0.01  # anti-aliased area is exact


def test_place_keeps_discs_apart_and_inside():
    rng = np.random.default_rng(0)
    radii = [0.1, 0.15, 0.1, 0.12]
    centers = place(rng, radii, min_gap=0.01)
    for i, (x, y) in enumerate(centers):
        assert radii[i] <= x <= 1 - radii[i] and radii[i] <= y <= 1 - radii[i]
        for j in range(i):
            assert math.dist(centers[i], centers[j]) >= radii[i] + radii[j] + 0.01


# ------------------------------------------------------------------------------------------------------------ scenes
def test_scenes_are_deterministic_with_boxes_inside_the_image():
    data = SceneDataset("train", seed=0, train_size=12)
    again = SceneDataset("train", seed=0, train_size=12)
    for i in reversed(range(len(data))):
        scene, same = data[i], again[i]
        assert torch.equal(scene.image, same.image) and scene.objects == same.objects
        assert scene.relations == same.relations
        assert scene.image.shape == (3, 64, 64) and 2 <= len(scene.objects) <= 5
        for obj in scene.objects:
            left, top, right, bottom = obj.box
            assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1 and 0 < obj.visible <= 1
    assert not torch.equal(SceneDataset("val", seed=0)[0].image, data[0].image)


def test_scene_relations_agree_with_the_boxes():
    data = SceneDataset("val", seed=2, overlap=0.8, max_objects=6)
    for scene in (data[i] for i in range(20)):
        by_id = {o.id: o for o in scene.objects}
        found = {(r.subject, r.predicate, r.object) for r in scene.relations}
        for s, predicate, o in found:
            a, b = by_id[s], by_id[o]
            inverse = {"left of": "right of", "above": "below", "in front of": "behind", "larger than": "smaller than"}
            inverse.update({v: k for k, v in inverse.items()})
            if predicate in inverse:
                assert (o, inverse[predicate], s) in found
            if predicate == "left of":
                assert a.center[0] + 0.05 < b.center[0]
            if predicate == "above":
                assert a.center[1] + 0.05 < b.center[1]
            if predicate == "in front of":
                assert s > o and b.visible < 1
            if predicate == "overlaps":
                assert s < o and min(a.box[2], b.box[2]) > max(a.box[0], b.box[0])
    assert any(r.predicate == "in front of" for i in range(20) for r in data[i].relations)


def test_scene_relations_of_known_boxes():
    left = SceneObject(0, "circle", "red", "solid", (0.0, 0.0, 0.2, 0.2), 1.0)
    right = SceneObject(1, "square", "blue", "striped", (0.5, 0.6, 0.9, 1.0), 1.0)
    masks = np.zeros((2, 4, 4), dtype=bool)
    got = {(r.subject, r.predicate, r.object) for r in scene_relations([left, right], masks, margin=0.05)}
    assert got == {
        (0, "left of", 1),
        (1, "right of", 0),
        (0, "above", 1),
        (1, "below", 0),
        (1, "larger than", 0),
        (0, "smaller than", 1),
    }
    assert Relation(0, "left of", 1).predicate == "left of"


def test_scene_groups_collate_and_json():
    data = SceneDataset("test", seed=0, repeat=1.0, min_objects=3, max_objects=3, test_size=4)
    scene = data[0]
    assert list(scene.groups().values()) == [[0, 1, 2]]  # repeat=1 copies the first object's kind
    images, scenes = collate_scenes([data[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64) and len(scenes) == 4
    payload = json.loads(json.dumps(scene.to_dict()))
    assert payload["objects"][0]["name"] == scene.objects[0].name and len(payload["objects"][0]["box"]) == 4
    loader = DataLoader(data, batch_size=2, collate_fn=collate_scenes)
    assert [len(s) for _, s in loader] == [2, 2]


def test_bad_scene_knobs():
    with pytest.raises(ConfigError, match="min_objects"):
        SceneConfig(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match="object_size"):
        SceneConfig(object_size=(0.5, 0.2))
    with pytest.raises(ConfigError, match="unknown SceneConfig field"):
        SceneDataset("train", objects=3)


# ------------------------------------------------------------------------------------------------------ calibration
def test_calibration_command_runs(tmp_path):
    from bramley.core.data.synthetic_calibrate import main

    knobs = ["train_size=64", "val_size=32", "test_size=32", "imbalance=1", 'shapes=["circle","square"]']
    knobs += ['colors=["red"]', 'textures=["solid"]', "counts=[1]", "image_size=16"]
    assert main(["--out", str(tmp_path), "--seeds", "0", "--cnn-epochs", "1", "--no-digits", "--set", *knobs]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    scores = results["datasets"]["synthetic"]["per_seed"][0]
    assert set(scores) >= {"ridge", "ncm", "cnn@1ep", "cnn@1ep seconds"} and 0 <= scores["ridge"] <= 100
    assert results["datasets"]["synthetic"]["config"]["image_size"] == 16


def test_readme_calibration_numbers_come_from_the_committed_results():
    """The README's calibration table is the committed results' table, and the defaults it was run with are ours."""
    results = json.loads((CORE / "results" / "synthetic-calibration" / "results.json").read_text())
    readme = (CORE / "README.md").read_text(encoding="utf-8")
    for row in results["table"]:
        cells = list(row.values())
        assert has_table_row(readme, cells), row
    import dataclasses

    config = dataclasses.asdict(SyntheticConfig())
    stored = results["datasets"]["synthetic"]["config"]
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()} == config
    command = f"--seeds {' '.join(map(str, results['seeds']))} --cnn-epochs {' '.join(map(str, results['cnn_epochs']))}"
    assert command in readme
