import dataclasses
import json

import pytest
import torch
from torchvision import transforms as T

from bramley.core.data.reinforced import (
    RAND_AUGMENT_OPS,
    AugmentConfig,
    FieldSpec,
    ReinforcedStore,
    ReinforcedWriter,
    ReplayableAugment,
    augmentation_seed,
    densify,
    topk_sparsify,
)
from bramley.core.errors import ConfigError, DataError


def _image(seed: int, h: int = 37, w: int = 45, c: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------ augmentations
@pytest.mark.parametrize("erase_value", ["zeros", "random"])
def test_replay_is_bit_exact_after_json_round_trip(erase_value):
    gray = AugmentConfig(size=(24, 20), erase=0.7, erase_value=erase_value, mean=(0.5,), std=(0.25,))
    augs = {3: ReplayableAugment(dataclasses.replace(gray, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))), 1: gray}
    augs[1] = ReplayableAugment(gray)
    seen_ops, erased = set(), 0
    for seed in range(40):
        image = _image(seed, h=17 + seed % 13, w=23 + seed % 7, c=1 if seed % 5 == 0 else 3)
        aug = augs[image.shape[0]]
        out, params = aug.sample(image, augmentation_seed(3, seed, 0))
        params = json.loads(json.dumps(params))
        replayed = aug.replay(image, params)
        assert out.dtype == torch.float32 and out.shape == (image.shape[0], 24, 20)
        assert torch.equal(out.view(torch.int32), replayed.view(torch.int32))  # bit for bit, -0.0 and NaN included
        seen_ops.update(op for op, _ in params["ops"])
        erased += "erase" in params
        if "erase" in params and erase_value == "random":
            top, left, h, w, _ = params["erase"]
            assert out[:, top : top + h, left : left + w].std() > 0.5  # noise, not a constant
    assert len(seen_ops) >= 10 and erased >= 15


def test_every_rand_augment_op_replays_and_changes_the_image():
    aug = ReplayableAugment(AugmentConfig(size=32, erase=0.0, num_ops=1))
    image = _image(1, 40, 40)
    base = aug.replay(image, {"src": [40, 40], "crop": [0, 0, 40, 40], "flip": 0, "ops": []})
    for op, name in enumerate(RAND_AUGMENT_OPS):
        levels = (0,) if name in ("Identity", "AutoContrast", "Equalize") else (9,) if name[0] in "PS" else (9, -9)
        for level in (9, -9) if name in ("Sharpness",) else levels:
            params = {"src": [40, 40], "crop": [0, 0, 40, 40], "flip": 0, "ops": [[op, level]]}
            a, b = aug.replay(image, params), aug.replay(image.clone(), json.loads(json.dumps(params)))
            assert torch.equal(a, b), name
            assert name == "Identity" or not torch.equal(a, base), name


def test_sampling_is_a_function_of_the_seed():
    aug = ReplayableAugment(AugmentConfig(size=16, erase_value="random", erase=1.0))
    image = _image(0)
    first = aug.sample(image, 123)
    second = aug.sample(image, torch.Generator().manual_seed(123))
    assert first[1] == second[1] and torch.equal(first[0], second[0])
    assert aug.sample(image, 124)[1] != first[1]
    assert augmentation_seed(0, 1, 2) == augmentation_seed(0, 1, 2) != augmentation_seed(0, 2, 1)


@pytest.mark.parametrize("seed", range(12))
def test_rand_augment_equals_torchvision(seed):
    aug = ReplayableAugment(AugmentConfig(size=30))
    image = _image(seed, 30, 30)
    torch.manual_seed(seed)
    expected = T.RandAugment()(image)  # num_ops=2, magnitude=9, 31 bins: the defaults of both
    ops = aug.draw_rand_augment(torch.Generator().manual_seed(seed))
    assert torch.equal(aug.apply_rand_augment(image, ops), expected), ops


@pytest.mark.parametrize("seed", range(20))
def test_crop_box_equals_torchvision_random_resized_crop(seed):
    aug = ReplayableAugment(AugmentConfig(size=8, scale=(0.08, 1.0) if seed % 2 else (0.9, 1.0), ratio=(0.2, 5.0)))
    image = _image(seed, 19, 61)
    torch.manual_seed(seed)
    expected = T.RandomResizedCrop.get_params(image, list(aug.config.scale), list(aug.config.ratio))
    assert aug.draw(19, 61, seed)["crop"] == list(expected)


def test_crop_box_falls_back_to_the_center_like_torchvision():
    config = AugmentConfig(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # a square of the whole area never fits 5x50
    torch.manual_seed(0)
    expected = T.RandomResizedCrop.get_params(_image(0, 5, 50), [1.0, 1.0], [1.0, 1.0])
    assert ReplayableAugment(config).draw(5, 50, 0)["crop"] == list(expected) == [0, 22, 5, 5]


def test_replay_refuses_parameters_that_do_not_fit():
    aug = ReplayableAugment(AugmentConfig(size=16))
    image = _image(0, 20, 30)
    good = {"src": [20, 30], "crop": [2, 3, 10, 12], "flip": 1, "ops": [[1, -9]], "erase": [0, 0, 4, 4, 0]}
    aug.replay(image, good)
    bad = [
        ({"src": [21, 30]}, "drawn for a \\[21, 30\\] image"),
        ({"crop": [15, 3, 10, 12]}, "does not fit a 20x30 image"),
        ({"crop": [0, 0, 0, 5]}, "does not fit"),
        ({"crop": [0, 0, 5]}, "'crop' must be 4 integers"),
        ({"crop": [0.5, 0, 5, 5]}, "'crop' must be 4 integers"),
        ({"flip": 2}, "flip must be 0 or 1"),
        ({"ops": [[14, 0]]}, "op \\[14, 0\\] is out of range"),
        ({"ops": [[1, 31]]}, "out of range"),
        ({"ops": [[1, 1], [1, 1], [1, 1]]}, "at most 2"),
        ({"ops": [[10, -9]]}, "Posterize takes no sign"),
        ({"ops": [[0, 3]]}, "Identity takes no magnitude"),
        ({"erase": [14, 0, 4, 4, 0]}, "erase box .* does not fit the 16x16 output"),
        ({"erase": [0, 0, 4, 4, -1]}, "erase seed"),
        ({"colour": 1}, "unknown keys \\['colour'\\]"),
    ]
    for change, message in bad:
        with pytest.raises(DataError, match=message):
            aug.replay(image, {**good, **change})
    with pytest.raises(DataError, match="missing keys \\['ops'\\]"):
        aug.replay(image, {k: v for k, v in good.items() if k != "ops"})
    with pytest.raises(DataError, match="uint8 \\(C, H, W\\)"):
        aug.replay(image.float() / 255, good)
    with pytest.raises(DataError, match="uint8"):
        aug.sample(torch.zeros(4, 20, 30, dtype=torch.uint8), 0)
    with pytest.raises(DataError, match="the image has 1 channels but augment mean/std have 3"):
        aug.sample(torch.zeros(1, 20, 30, dtype=torch.uint8), 0)


def test_augment_config_checks_and_round_trips():
    config = AugmentConfig(size=(32, 48), erase_value="random", mean=(0.5,), std=(0.25,))
    assert AugmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in [{"hflip": 1.5}, {"erase": -0.1}, {"magnitude": 31}, {"scale": (0.5, 0.1)}, {"erase_value": "noise"}]:
        with pytest.raises(ConfigError):
            AugmentConfig(**bad)
    with pytest.raises(ConfigError, match="unknown augment setting 'sizes'"):
        AugmentConfig.from_dict({"sizes": 3})


# ------------------------------------------------------------------------------------------------- top-k targets
def test_topk_and_densify():
    probs = torch.softmax(torch.randn(5, 10, generator=torch.Generator().manual_seed(0)), -1)
    values, ids = topk_sparsify(probs, 3)
    assert torch.equal(values, probs.sort(-1, descending=True).values[:, :3])
    smooth = densify(values, ids, 10, "smooth")
    assert torch.allclose(smooth.sum(-1), torch.ones(5)) and torch.equal(smooth.gather(-1, ids), values)
    rest = (1 - values.sum(-1, keepdim=True)) / 7
    others = smooth.scatter(-1, ids, rest.expand(-1, 3))
    assert torch.allclose(others, rest.expand(-1, 10))
    zeros = densify(values, ids, 10, "zeros")
    assert torch.allclose(zeros.gather(-1, ids), values / values.sum(-1, keepdim=True))  # renormalized, no softmax
    assert (zeros > 0).sum(-1).eq(3).all()
    full_k = densify(*topk_sparsify(probs, 10), 10, "smooth")
    assert torch.allclose(full_k, probs)
    over = densify(torch.tensor([0.7, 0.31]), torch.tensor([1, 2]), 4, "smooth")  # rounding: sum slightly > 1
    assert torch.allclose(over.sum(), torch.tensor(1.0)) and over[0] == over[3] == 0
    with pytest.raises(ConfigError, match="top-k must be in \\[1, number of classes = 10\\], got 11"):
        topk_sparsify(probs, 11)
    with pytest.raises(DataError, match="class ids"):
        densify(values, ids + 8, 10)
    with pytest.raises(ConfigError, match="densify method"):
        densify(values, ids, 10, "softmax")


# ------------------------------------------------------------------------------------------------------ storage
FIELDS = {"probs": FieldSpec("float16", (2, 3)), "ids": FieldSpec("int16", (2, 3))}


def _shard_data(writer: ReinforcedWriter, shard: int):
    rows = writer.shard_range(shard)
    n = len(rows)
    probs = torch.arange(rows.start * 6, rows.stop * 6, dtype=torch.float32).reshape(n, 2, 3) / 100
    ids = torch.arange(n * 6, dtype=torch.int64).reshape(n, 2, 3) % 7
    params = [[{"src": [8, 8], "crop": [0, 0, i + 1, 8], "flip": a, "ops": []} for a in range(2)] for i in rows]
    return {"probs": probs, "ids": ids}, params


def _write(root, fail_after: int | None = None, meta=None) -> ReinforcedWriter:
    writer = ReinforcedWriter(root, num_samples=11, fields=FIELDS, num_augmentations=2, shard_size=4, meta=meta)
    for done, shard in enumerate(writer.pending()):
        if fail_after is not None and done == fail_after:
            raise KeyboardInterrupt("killed")
        writer.write_shard(shard, *_shard_data(writer, shard))
    return writer


def test_store_round_trip(tmp_path):
    writer = _write(tmp_path / "r", meta={"augment": AugmentConfig().to_dict(), "teachers": ["a", "b"]})
    assert writer.num_shards == 3 and writer.pending() == []
    store = ReinforcedStore(tmp_path / "r")
    assert len(store) == 11 and store.num_augmentations == 2 and store.meta["teachers"] == ["a", "b"]
    record = store[9]
    assert record["index"] == 9 and record["probs"].dtype == torch.float16 and record["ids"].dtype == torch.int16
    assert torch.equal(record["probs"], (torch.arange(54, 60, dtype=torch.float32).reshape(2, 3) / 100).half())
    assert record["params"][1] == {"src": [8, 8], "crop": [0, 0, 10, 8], "flip": 1, "ops": []}
    assert store[-1]["index"] == 10 and store.verify() == {}
    with pytest.raises(IndexError):
        store[11]


def test_resume_after_kill_gives_the_same_files(tmp_path):
    _write(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "killed", fail_after=2)
    partial = ReinforcedStore(tmp_path / "killed")
    assert partial.missing() == [2]
    with pytest.raises(DataError, match=r"shard-00002\.safetensors is missing"):
        partial[10]
    assert partial[3]["index"] == 3  # finished shards are usable meanwhile
    assert not list((tmp_path / "killed").glob(".*tmp*"))  # no half-written files left behind
    writer = ReinforcedWriter(tmp_path / "killed", num_samples=11, fields=FIELDS, num_augmentations=2, shard_size=4)
    assert writer.pending() == [2]
    _write(tmp_path / "killed")
    for name in ["manifest.json", *(f"shard-{s:05d}.safetensors" for s in range(3))]:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name


def test_truncated_shard_is_named_and_the_rest_stay_usable(tmp_path):
    _write(tmp_path)
    path = tmp_path / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    store = ReinforcedStore(tmp_path)
    with pytest.raises(DataError, match=r"shard-00001\.safetensors is truncated or corrupt"):
        store[5]
    assert store[0]["index"] == 0 and store[10]["index"] == 10
    assert list(store.verify()) == [1]
    writer = ReinforcedWriter(tmp_path, num_samples=11, fields=FIELDS, num_augmentations=2, shard_size=4)
    assert writer.pending() == [1]  # a resumed run rewrites it
    path.write_bytes(b"\x00" * 3)
    assert list(ReinforcedStore(tmp_path).verify()) == [1]


def test_shard_from_elsewhere_and_dataset_mismatch(tmp_path):
    _write(tmp_path)
    (tmp_path / "shard-00000.safetensors").write_bytes((tmp_path / "shard-00001.safetensors").read_bytes())
    store = ReinforcedStore(tmp_path)
    with pytest.raises(DataError, match=r"holds sample ids other than 0\.\.3"):
        store[0]
    with pytest.raises(DataError, match="holds 11 samples but the dataset has 12"):
        store.check_dataset(12)
    store.check_dataset(11)
    with pytest.raises(DataError, match="other settings \\(shard_size differ\\)"):
        ReinforcedWriter(tmp_path, num_samples=11, fields=FIELDS, num_augmentations=2, shard_size=5)
    with pytest.raises(DataError, match="is not a reinforced dataset"):
        ReinforcedStore(tmp_path / "nothing")


def test_writer_checks_what_it_is_given(tmp_path):
    writer = ReinforcedWriter(tmp_path, num_samples=3, fields={"emb": FieldSpec("float32", (4,))}, shard_size=2)
    writer.write_shard(1, {"emb": torch.ones(1, 4)})
    with pytest.raises(ValueError, match="has shape \\(2, 4\\), expected \\(1, 4\\)"):
        writer.write_shard(1, {"emb": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="stores no augmentations"):
        writer.write_shard(0, {"emb": torch.ones(2, 4)}, [[], []])
    with pytest.raises(ValueError, match="differ from the manifest"):
        writer.write_shard(0, {"x": torch.ones(2, 4)})
    assert writer.pending() == [0]
    assert "params" not in ReinforcedStore(tmp_path)[2]
    with pytest.raises(ConfigError, match="'index' is reserved"):
        ReinforcedWriter(tmp_path / "b", num_samples=3, fields={"index": FieldSpec("int64", ())})
