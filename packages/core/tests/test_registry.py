"""bramley.core.registry: registration, lookup errors, listing, and timm registration with features_only."""

from __future__ import annotations

import itertools
import warnings

import pytest
import timm
import torch
import torch.nn as nn

from bramley.core import registry
from bramley.core.features import FeatureExtractor
from bramley.core.registry import create_model, get_model_entry, list_models, register_model, register_timm

_ids = itertools.count()


class TinyNet(nn.Module):
    """Three stages (strides 2, 4, 8) with timm's feature protocol: ``feature_info`` + ``forward_intermediates``."""

    def __init__(self, num_classes: int = 5, width: int = 4, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
        self.stages = nn.ModuleList(
            [
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            ]
        )
        self.head = nn.Linear(4 * width, num_classes)
        self.feature_info = [
            {"num_chs": width, "reduction": 2, "module": "stem"},
            {"num_chs": 2 * width, "reduction": 4, "module": "stages.0"},
            {"num_chs": 4 * width, "reduction": 8, "module": "stages.1"},
        ]

    def forward_intermediates(self, x, indices=None, intermediates_only=False):
        feats = [x := self.stem(x)]
        for stage in self.stages:
            feats.append(x := stage(x))
        take = range(len(feats)) if indices is None else indices
        out = [feats[i] for i in take]
        return out if intermediates_only else (self.head(x.mean((2, 3))), out)

    def forward(self, x):
        return self.forward_intermediates(x)[0]


class PlainNet(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Each test sees the real registry's models but its own registrations vanish afterwards (from timm's too)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield
    from timm.models import _registry as timm_registry  # private, but timm has no public unregister

    for name in timm.list_models("bramley_regtest_*"):
        timm_registry._clear_model_entries(name)
        timm_registry._model_entrypoints.pop(name)


def register_tiny(package: str = "demo_net", cls: type[nn.Module] = TinyNet, doc: str = "A tiny test network.") -> str:
    """Register a factory for ``cls`` as if it lived in ``bramley.<package>.model``; returns its unique name."""
    name = f"regtest_{cls.__name__.lower()}_{next(_ids)}"

    def factory(**kwargs):
        return cls(**kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = f"bramley.{package}.model"
    factory.__doc__ = doc
    register_model(factory)
    return name


def test_register_and_create():
    name = register_tiny()
    entry = get_model_entry(name)
    assert entry.package == "demo_net" and entry.description == "A tiny test network."
    model = create_model(name, num_classes=7, width=2)
    assert isinstance(model, TinyNet) and model.head.out_features == 7 and model.stem.out_channels == 2
    assert model.model_config == {"name": name, "kwargs": {"num_classes": 7, "width": 2}}
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_register_with_arguments():
    @register_model(name="regtest_named", description="Given description.", tags=("demo",))
    def some_factory(num_classes: int = 3) -> nn.Module:
        """Docstring that the explicit description overrides."""
        return PlainNet(num_classes)

    entry = get_model_entry("regtest_named")
    assert entry.fn is some_factory and entry.description == "Given description." and entry.tags == ("demo",)
    assert "some_factory" not in list_models()


def test_duplicate_name_from_another_function_is_an_error():
    name = register_tiny(package="alpha")

    def other(**kwargs):
        return PlainNet(**kwargs)

    other.__name__ = other.__qualname__ = name  # same function name, another package: still a conflict
    other.__module__ = "bramley.beta.model"
    with pytest.raises(ValueError, match=rf"model name '{name}' is already registered by package 'alpha'"):
        register_model(name=name)(other)
    assert get_model_entry(name).package == "alpha", "the first registration must survive"
    # the same function registered again (a reloaded module) is not a conflict
    register_model(get_model_entry(name).fn)


def test_unknown_name_suggests_close_matches():
    name = register_tiny()
    with pytest.raises(KeyError, match=rf"unknown model '{name}x'\. Did you mean: {name}"):
        create_model(name + "x")
    with pytest.raises(KeyError, match="unknown model 'zzz_nothing_like_it'") as info:
        create_model("zzz_nothing_like_it")
    assert "Did you mean" not in str(info.value)


def test_unknown_name_with_nothing_registered(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    with pytest.raises(KeyError, match="none registered"):
        create_model("mobileone_s0")


def test_list_models_by_pattern_and_package():
    a = register_tiny(package="alpha_beta")
    b = register_tiny(package="alpha_beta", cls=PlainNet)
    c = register_tiny(package="gamma")
    assert list_models("regtest_*", package="alpha_beta") == sorted([a, b])
    assert list_models("regtest_*", package="alpha-beta") == sorted([a, b]), "dist-style names work too"
    assert list_models("regtest_plainnet_*") == [b]
    assert c in list_models() and c not in list_models(package="alpha_beta")
    assert list_models("no-such-*") == []
    assert list_models() == sorted(list_models())


def test_timm_create_model():
    name = register_tiny()
    assert register_timm([name]) == [f"bramley_{name}"]
    model = timm.create_model(f"bramley_{name}", num_classes=3)
    assert isinstance(model, TinyNet) and model.head.out_features == 3
    assert model.model_config == {"name": name, "kwargs": {"num_classes": 3}}
    assert timm.create_model(f"bramley_{name}", num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    # timm's own modules stay apart: ours is grouped under bramley_<package>
    assert f"bramley_{name}" in timm.list_models(module="bramley_demo_net")
    with pytest.raises(ValueError, match="ships no pretrained weights"):
        timm.create_model(f"bramley_{name}", pretrained=True)


def test_timm_features_only():
    name = register_tiny()
    register_timm([name])
    features = timm.create_model(f"bramley_{name}", features_only=True, width=4)
    assert isinstance(features, FeatureExtractor)
    assert features.feature_info.channels() == [4, 8, 16] and features.feature_info.reduction() == [2, 4, 8]
    maps = features(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]

    last_two = timm.create_model(f"bramley_{name}", features_only=True, out_indices=(1, -1))
    assert last_two.feature_info.channels() == [8, 16]
    assert [m.shape[1] for m in last_two(torch.randn(1, 3, 32, 32))] == [8, 16]
    with pytest.raises(ValueError, match=r"out_indices \(0, 3\) invalid for a model with 3 feature levels"):
        timm.create_model(f"bramley_{name}", features_only=True, out_indices=(0, 3))
    with pytest.raises(ValueError, match=r"out_indices \(0, -3\) invalid"):
        timm.create_model(f"bramley_{name}", features_only=True, out_indices=(0, -3))  # the same level twice
    with pytest.raises(ValueError, match=r"unsupported feature options \['output_stride'\]"):
        timm.create_model(f"bramley_{name}", features_only=True, output_stride=8)


def test_timm_features_only_needs_the_protocol():
    name = register_tiny(cls=PlainNet)
    register_timm([name])
    with pytest.raises(TypeError, match="PlainNet does not support feature extraction"):
        timm.create_model(f"bramley_{name}", features_only=True)


def test_register_timm_by_package_is_idempotent_and_never_overwrites_timm():
    names = [register_tiny(package="idem"), register_tiny(package="idem", cls=PlainNet)]
    expected = sorted(f"bramley_{n}" for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # timm warns when a name is overwritten: a second call must not
        assert sorted(register_timm(package="idem")) == expected
        assert sorted(register_timm(package="idem")) == expected

    clash = register_tiny()

    def foreign(pretrained=False, **kwargs):
        return PlainNet()

    foreign.__name__ = f"bramley_{clash}"
    timm.models.register_model(foreign)  # a third party got the name first
    with pytest.raises(ValueError, match=f"timm already has a model 'bramley_{clash}'"):
        register_timm([clash])
    with pytest.raises(KeyError, match="unknown model"):
        register_timm(["regtest_never_registered"])


def test_timm_registrations_of_earlier_tests_were_removed():
    assert timm.list_models("bramley_regtest_*") == []


def test_default_example_inputs_are_images_of_the_registered_size():
    name = register_tiny()
    entry = get_model_entry(name)
    assert entry.example_inputs is None and entry.input_size == (3, 224, 224)
    args, kwargs = entry.make_example_inputs(image_size=16)
    assert kwargs == {} and len(args) == 1 and args[0].shape == (2, 3, 16, 16) and args[0].dtype == torch.float32
    assert entry.make_example_inputs(image_size=(8, 12))[0][0].shape == (2, 3, 8, 12)
    assert create_model(name)(*args, **kwargs).shape == (2, 5)

    @register_model(input_size=(1, 8, 8))
    def regtest_gray(**kwargs) -> nn.Module:
        return TinyNet(in_chans=1, **kwargs)

    gray = get_model_entry("regtest_gray")
    assert gray.input_size == (1, 8, 8) and gray.make_example_inputs()[0][0].shape == (2, 1, 8, 8)
    register_model(input_size=32)(PlainNet)
    assert get_model_entry("PlainNet").input_size == (3, 32, 32), "an int S means (3, S, S)"


def test_custom_example_inputs():
    def two_inputs():
        return (torch.randn(2, 8),), {"scale": torch.full((2, 1), 2.0)}

    @register_model(example_inputs=two_inputs)
    def regtest_scaled(**kwargs) -> nn.Module:
        class Scaled(PlainNet):
            def forward(self, x, scale):
                return self.fc(x) * scale

        return Scaled(**kwargs)

    entry = get_model_entry("regtest_scaled")
    assert entry.example_inputs is two_inputs and entry.input_size is None
    args, kwargs = entry.make_example_inputs()
    assert create_model("regtest_scaled", num_classes=3)(*args, **kwargs).shape == (2, 3)
    with pytest.raises(ValueError, match="has custom example_inputs; image_size applies to image models"):
        entry.make_example_inputs(image_size=16)


def test_bad_example_inputs_are_clear_errors():
    with pytest.raises(TypeError, match=r"register_model\('regtest_a'\): example_inputs must be a zero-argument"):
        register_model(name="regtest_a", example_inputs=torch.randn(2, 8))(PlainNet)
    with pytest.raises(ValueError, match="give example_inputs or input_size, not both"):
        register_model(name="regtest_b", example_inputs=lambda: ((), {}), input_size=32)(PlainNet)
    for bad in (0, -3, (3, 32), (3, 32, 0), (3.0, 32, 32), "224", True):
        with pytest.raises(ValueError, match=r"input_size must be a positive int S"):
            register_model(name="regtest_c", input_size=bad)(PlainNet)
    assert list_models("regtest_[abc]") == [], "failed registrations leave nothing behind"

    register_model(name="regtest_d", example_inputs=lambda: [torch.randn(2, 8)])(PlainNet)
    with pytest.raises(TypeError, match=r"example_inputs of model 'regtest_d' must return \(args: tuple, kwargs"):
        get_model_entry("regtest_d").make_example_inputs()
