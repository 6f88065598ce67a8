"""bramley.core.registry: registration, lookup errors, listing, pretrained cfgs, and the timm bridge (cfgs in timm's
registry, features_only, local weights); bramley.core.features: timm's model interface on a toy backbone."""

from __future__ import annotations

import itertools
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import FeatureListNet
from timm.models._features import FeatureGetterNet

from bramley.core import registry
from bramley.core.checkpoint import CheckpointError, save_checkpoint, save_pretrained
from bramley.core.features import StagedBackbone, features_only
from bramley.core.layers import check_image_batch, is_traced
from bramley.core.registry import create_model, get_model_entry, list_models, register_model, register_timm

_ids = itertools.count()


class TinyNet(StagedBackbone):
    """Three conv stages (strides 2, 4, 8) with timm's model interface from :class:`StagedBackbone`."""

    classifier_name = "head"

    def __init__(self, num_classes: int = 5, width: int = 4, in_chans: int = 3, global_pool: str = "avg"):
        super().__init__()
        self.in_chans = in_chans
        self.stem = nn.Identity()
        widths = [in_chans, width, 2 * width, 4 * width]
        self.stages = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()) for a, b in itertools.pairwise(widths))
        )
        self.final_conv = nn.Conv2d(4 * width, 8 * width, 1)
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"stages.{i}"} for i, c in enumerate(widths[1:])
        ]
        self.head = self.init_classifier(8 * width, num_classes, global_pool)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pool(x)
        return x if pre_logits else self.head(x)


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
    assert isinstance(model, TinyNet) and model.head.out_features == 7 and model.stages[0][0].out_channels == 2
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
    with pytest.raises(ValueError, match="has no pretrained tags"):
        timm.create_model(f"bramley_{name}.in1k")


def test_timm_features_only():
    name = register_tiny()
    register_timm([name])

    def features(**kwargs):
        torch.manual_seed(0)  # the same weights for every feature class
        return timm.create_model(f"bramley_{name}", features_only=True, **kwargs)

    default = features(width=4)
    assert isinstance(default, FeatureListNet)  # timm's default feature class
    assert default.feature_info.channels() == [4, 8, 16] and default.feature_info.reduction() == [2, 4, 8]
    x = torch.randn(2, 3, 32, 32)
    maps = default(x)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    for feature_cls in ("getter", "hook", "dict", "fx"):
        out = features(feature_cls=feature_cls)(x)
        assert all(torch.equal(a, b) for a, b in zip(maps, out.values() if isinstance(out, dict) else out, strict=True))
    getter = timm.create_model(f"bramley_{name}", features_only=True, feature_cls="getter", out_indices=(0, 1))
    assert isinstance(getter, FeatureGetterNet) and isinstance(getter.model.final_conv, nn.Identity)
    assert len(getter.model.stages) == 2 and getter.model.num_classes == 0, "pruned to the levels it returns"

    last_two = features(out_indices=(1, -1))
    assert last_two.feature_info.channels() == [8, 16]
    assert [m.shape[1] for m in last_two(torch.randn(1, 3, 32, 32))] == [8, 16]
    with pytest.raises(ValueError, match=r"out_indices \(0, 3\) invalid for a model with 3 feature levels"):
        timm.create_model(f"bramley_{name}", features_only=True, out_indices=(0, 3))
    with pytest.raises(ValueError, match=r"out_indices \(0, -3\) invalid"):
        timm.create_model(f"bramley_{name}", features_only=True, out_indices=(0, -3))  # the same level twice
    with pytest.raises(ValueError, match="output_stride is not supported"):
        timm.create_model(f"bramley_{name}", features_only=True, output_stride=8)
    with pytest.raises(ValueError, match="unknown feature_cls 'pyramid'"):
        timm.create_model(f"bramley_{name}", features_only=True, feature_cls="pyramid")


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


# ------------------------------------------------------------------------------------------ pretrained cfgs in timm
CFG = dict(
    pool_size=(4, 4),
    crop_pct=0.9,
    interpolation="bilinear",
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    num_classes=5,
    first_conv="stages.0.0",
    classifier="head",
    license="apache-2.0",
    paper_ids="arXiv:0000.0",
)


def register_with_cfg(cfg=CFG, input_size: int = 32) -> str:
    name = f"regtest_cfg_{next(_ids)}"
    register_model(name=name, input_size=input_size, pretrained_cfg=cfg)(TinyNet)
    return name


def test_pretrained_cfg_on_models_and_in_timm():
    name = register_with_cfg()
    model = create_model(name)
    assert model.pretrained_cfg == {**CFG, "input_size": (3, 32, 32), "architecture": name}
    assert model.default_cfg is model.pretrained_cfg
    expected = dict(input_size=(3, 32, 32), interpolation="bilinear", mean=CFG["mean"], std=CFG["std"], crop_pct=0.9)
    assert {k: timm.data.resolve_model_data_config(model)[k] for k in expected} == expected

    (timm_name,) = register_timm([name])
    assert timm_name in timm.list_models(name_matches_cfg=True) and timm.list_models(timm_name, pretrained=True) == []
    assert timm.models.get_pretrained_cfg_value(timm_name, "crop_pct") == 0.9
    tm = timm.create_model(timm_name)
    assert tm.pretrained_cfg["architecture"] == timm_name and tm.pretrained_cfg["first_conv"] == "stages.0.0"
    config = timm.data.resolve_data_config(model=tm)
    assert {k: config[k] for k in expected} == expected
    transform = timm.data.create_transform(**config)
    from PIL import Image

    assert transform(Image.new("RGB", (48, 40))).shape == (3, 32, 32)
    features = timm.create_model(timm_name, features_only=True)
    assert features.default_cfg["mean"] == CFG["mean"] and "classifier" not in features.default_cfg


def test_bad_pretrained_cfgs_are_refused():
    with pytest.raises(TypeError, match="pretrained_cfg must be a mapping"):
        register_with_cfg(cfg=[("crop_pct", 0.9)])
    for key in ("input_size", "hf_hub_id", "file", "url"):
        with pytest.raises(ValueError, match=rf"must not set \['{key}'\].*publishes no weights"):
            register_with_cfg(cfg={**CFG, key: "x"})
    with pytest.raises(ValueError, match="a model with custom example_inputs cannot have one"):
        register_model(name="regtest_text", example_inputs=lambda: ((), {}), pretrained_cfg=CFG)(PlainNet)
    name = register_with_cfg(cfg={**CFG, "crop_percent": 0.9})  # a typo: timm's PretrainedCfg has no such field
    with pytest.raises(ValueError, match=rf"register_model\('{name}'\): pretrained_cfg is not a timm PretrainedCfg"):
        register_timm([name])


def test_register_timm_takes_image_models_only():
    image = register_tiny(package="mixed")
    register_model(name="regtest_tokens", example_inputs=lambda: ((torch.randn(2, 8),), {}))(PlainNet)
    get_model_entry("regtest_tokens")  # registered under the test module's package, not "mixed"
    with pytest.raises(ValueError, match="regtest_tokens is not an image model"):
        register_timm(["regtest_tokens"])
    assert register_timm(package="mixed") == [f"bramley_{image}"]


# ------------------------------------------------------------------------------------ local weights the timm way
def test_timm_pretrained_loads_a_local_bramley_checkpoint(tmp_path):
    name = register_with_cfg()
    (timm_name,) = register_timm([name])
    trained = create_model(name, width=2)
    save_pretrained(trained, tmp_path / "folder")
    x = torch.randn(2, 3, 32, 32)
    for spec in (tmp_path / "folder", tmp_path / "folder" / "model.safetensors"):
        model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(spec)))
        assert model.training, "timm returns models in train mode"
        assert model.pretrained_cfg["file"] == str(spec) and model.pretrained_cfg["crop_pct"] == 0.9
        assert torch.equal(model.eval()(x), trained.eval()(x))
    # fine-tuning: another head, the trunk kept; the config follows, so the model saves and reloads
    tuned = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(spec)), num_classes=3)
    assert tuned.head.out_features == 3 and torch.equal(tuned.stages[0][0].weight, trained.stages[0][0].weight)
    assert tuned.model_config["kwargs"] == {"width": 2, "num_classes": 3}
    unpooled = timm.create_model(
        timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(spec)), num_classes=0, global_pool=""
    )
    assert unpooled.eval()(x).shape == (2, 16, 4, 4)

    other = register_with_cfg()
    with pytest.raises(CheckpointError, match=f"holds a {name} model, not {other}"):
        timm.create_model(register_timm([other])[0], pretrained=True, pretrained_cfg_overlay=dict(file=str(spec)))
    with pytest.raises(CheckpointError, match="does not exist"):
        timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope")))
    save_checkpoint(trained.state_dict(), tmp_path / "plain.safetensors")  # a state dict without bramley's config
    with pytest.raises(CheckpointError, match="carries no bramley model config"):
        timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "plain.safetensors"))
        )
    plain = timm.create_model(timm_name, width=2, checkpoint_path=str(tmp_path / "plain.safetensors"))  # timm's way
    assert torch.equal(plain.eval()(x), trained(x))


# ------------------------------------------------------------------------------------ timm's model interface (core)
def test_classifier_interface():
    model = TinyNet(num_classes=5).eval()
    model.model_config = {"name": "tiny", "kwargs": {"num_classes": 5}}
    x = torch.randn(2, 3, 16, 16)
    assert model.get_classifier() is model.head and model.num_features == model.head_hidden_size == 32
    features = model.forward_features(x)
    assert features.shape == (2, 32, 2, 2) and model.forward_head(features, pre_logits=True).shape == (2, 32)
    model.reset_classifier(10)
    assert model(x).shape == (2, 10) and model.num_classes == 10 and model.model_config["kwargs"] == {"num_classes": 10}
    model.reset_classifier(0)
    assert model(x).shape == (2, 32) and isinstance(model.get_classifier(), nn.Identity)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 32, 2, 2) and model.model_config["kwargs"] == {"num_classes": 0, "global_pool": ""}
    with pytest.raises(ValueError, match="global_pool='' \\(no pooling\\) needs num_classes=0"):
        model.reset_classifier(3, "")
    model.reset_classifier(3)  # timm's cfg test: a classifier on the unpooled model brings average pooling back
    assert model(x).shape == (2, 3) and model.model_config["kwargs"] == {"num_classes": 3, "global_pool": "avg"}
    with pytest.raises(ValueError, match="global_pool must be one of"):
        TinyNet(global_pool="max")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        TinyNet(num_classes=-1)
    assert TinyNet(num_classes=0, global_pool="")(x).shape == (2, 32, 2, 2)


def test_forward_intermediates_and_pruning():
    model = TinyNet().eval()
    x = torch.randn(1, 3, 32, 32)
    final, feats = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x)) and [f.shape[1] for f in feats] == [4, 8, 16]
    assert [f.shape[1] for f in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [8, 16]
    early, feats = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert torch.equal(early, feats[0]), "stopping early ends at the deepest requested stage"
    for bad in ([3], [-4], []):
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="NCHW features only"):
        model.forward_intermediates(x, output_fmt="NHWC")
    assert model.prune_intermediate_layers([0, -2]) == [0, 1]
    assert len(model.stages) == 2 and model.num_features == 8 and model.num_classes == 0
    assert model(x).shape == (1, 8, 8, 8)


def test_grad_checkpointing_recomputes_stages():
    class Counted(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    torch.manual_seed(0)
    model, plain = TinyNet(), TinyNet()
    plain.load_state_dict(model.state_dict())
    model.stages[1] = counted = Counted(model.stages[1])
    model.set_grad_checkpointing()
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    out.sum().backward()
    plain(x).sum().backward()
    assert counted.calls == 2, "the checkpointed stage runs again in the backward pass"
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    model.set_grad_checkpointing(False)
    model(x).sum().backward()
    assert counted.calls == 3


def test_input_checks_step_aside_when_traced():
    model = TinyNet().eval()
    with pytest.raises(ValueError, match=r"TinyNet expects 3 input channels: images of shape \(batch, 3, height"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="expects an image tensor"):
        check_image_batch([1.0], 3, "Net")
    traced = torch.fx.symbolic_trace(model)  # the check sees a Proxy and steps aside
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(traced(x), model(x)) and not is_traced(x)
    for scripted in (torch.jit.script(model), torch.jit.script(traced)):  # timm scripts fx graphs too
        assert torch.equal(scripted(x), model(x))


def test_features_only_without_timm_create_model():
    getter = features_only(TinyNet(), out_indices=2, feature_cls="getter")  # an int: the last n levels
    assert getter.feature_info.channels() == [8, 16] and len(getter(torch.randn(1, 3, 16, 16))) == 2
    assert not hasattr(getter, "pretrained_cfg"), "a model without a cfg gives a wrapper without one"

    class NoGetter(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()
            self.feature_info = [{"num_chs": 3, "reduction": 1, "module": "body"}]

    assert features_only(NoGetter())(torch.ones(1, 3, 2, 2))[0].shape == (1, 3, 2, 2)  # hooks need no getter
    with pytest.raises(TypeError, match="NoGetter has no forward_intermediates"):
        features_only(NoGetter(), feature_cls="getter")
    with pytest.raises(ValueError, match="out_indices=4: take between 1 and 3"):
        features_only(TinyNet(), out_indices=4)
