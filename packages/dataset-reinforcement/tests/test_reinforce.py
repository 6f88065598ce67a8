import pytest
import torch

from bramley.core.data.reinforced import ReinforcedStore, ReplayableAugment, densify
from bramley.core.errors import CheckpointError, ConfigError, DataError
from bramley.dataset_reinforcement.reinforce import TeacherEnsemble, load_teacher, reinforce

from .conftest import AUGMENT, NUM_CLASSES, make_images, make_teacher


def test_stored_targets_are_the_ensemble_on_the_replayed_augmentation(store, images, teacher):
    data = ReinforcedStore(store)
    assert len(data) == 10 and data.num_augmentations == 3 and data.num_shards == 3
    assert data.meta["topk"] == 2 and data.meta["num_classes"] == NUM_CLASSES and data.meta["data"] == "toy"
    augment = ReplayableAugment(AUGMENT)
    for index in (0, 5, 9):
        record = data[index]
        assert int(record["label"]) == int(images.targets[index])
        views = torch.stack([augment.replay(images.image(index), p) for p in record["params"]])
        probs = teacher(views)
        values, ids = probs.topk(2, dim=-1)
        assert torch.equal(record["ids"].long(), ids)
        torch.testing.assert_close(record["probs"].float(), values, atol=1e-3, rtol=1e-3)  # float16 storage
        assert len({str(p) for p in record["params"]}) == 3  # three different augmentations


def test_ensemble_is_the_mean_of_the_teachers_softmax():
    ensemble = make_teacher()
    x = torch.randn(4, 3, 12, 12)
    expected = (ensemble.teachers[0](x).softmax(-1) + ensemble.teachers[1](x).softmax(-1)) / 2
    torch.testing.assert_close(ensemble(x), expected)
    torch.testing.assert_close(ensemble(x).sum(-1), torch.ones(4))
    with pytest.raises(ConfigError, match="empty"):
        TeacherEnsemble([])


def test_killed_run_resumes_to_the_same_files(tmp_path, images, teacher):
    kwargs = {"num_augmentations": 3, "topk": 2, "seed": 7, "shard_size": 4, "batch_size": 5}
    reinforce(images, teacher, tmp_path / "whole", AUGMENT, **kwargs)
    first = reinforce(images, teacher, tmp_path / "resumed", AUGMENT, stop_after=1, **kwargs)  # killed after a shard
    assert first["shards_written"] == 1 and first["shards_pending"] == 2
    assert ReinforcedStore(tmp_path / "resumed").missing() == [1, 2]
    second = reinforce(images, teacher, tmp_path / "resumed", AUGMENT, **kwargs)
    assert second["shards_written"] == 2
    for path in sorted((tmp_path / "whole").iterdir()):
        assert path.read_bytes() == (tmp_path / "resumed" / path.name).read_bytes(), path.name
    with pytest.raises(DataError, match="other settings"):
        reinforce(images, teacher, tmp_path / "whole", AUGMENT, **{**kwargs, "topk": 3})


def test_bad_settings(tmp_path, images, teacher):
    with pytest.raises(ConfigError, match="topk=6 must be in \\[1, 5\\]"):
        reinforce(images, teacher, tmp_path / "a", AUGMENT, topk=6)
    with pytest.raises(ConfigError, match="teachers predict \\(3,\\) outputs but the dataset has 5 classes"):
        reinforce(make_images(), TeacherEnsemble([torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))]),
                  tmp_path / "b", AUGMENT, topk=2)  # fmt: skip


def test_load_teacher_by_folder_name_and_timm_file(tmp_path):
    from safetensors.torch import save_file

    from bramley.core.checkpoint import save_pretrained
    from bramley.core.registry import create_model

    model = create_model("dr_convnet", num_classes=NUM_CLASSES, widths=[4, 8]).eval()
    save_pretrained(model, tmp_path / "run")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_teacher(str(tmp_path / "run"))(x), model(x))
    assert load_teacher("dr_convnet", num_classes=7).num_classes == 7

    import timm

    reference = timm.create_model("resnet10t", num_classes=NUM_CLASSES).eval()
    save_file(reference.state_dict(), str(tmp_path / "r.safetensors"))
    loaded = load_teacher(f"timm:resnet10t={tmp_path / 'r.safetensors'}", NUM_CLASSES)
    torch.testing.assert_close(loaded(x), reference(x))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher("timm:resnet10t=/nowhere.safetensors", NUM_CLASSES)
    with pytest.raises(CheckpointError):
        load_teacher("no_such_model", NUM_CLASSES)


def test_top3_targets_densify_to_distributions(store):
    record = ReinforcedStore(store)[3]
    target = densify(record["probs"], record["ids"], NUM_CLASSES, "smooth")
    torch.testing.assert_close(target.sum(-1), torch.ones(3))
