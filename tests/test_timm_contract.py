"""timm's model contract: every bramley image model that declares a timm cfg works as a timm model.

Discovery: as in ``test_model_suite.py``, every installed method package is imported through its ``bramley.cli``
entry point. The models registered with ``register_model(pretrained_cfg=...)`` are bramley's timm-native vision
models; each package's ``register_timm()`` must put exactly those into timm (``bramley_<name>``), and every check
below runs on each of them through ``timm.create_model``, so a new vision package is checked by registering.

Checks (the interface is :class:`bramley.core.features.StagedBackbone`, the bridge
:func:`bramley.core.registry.register_timm`):

- **cfg**: the model's ``pretrained_cfg`` is the registered one, complete (input size, pool size, crop, interpolation,
  mean, std, classes, first conv, classifier, license, paper) and weightless; ``first_conv`` names the input convs,
  ``classifier`` the module ``get_classifier()`` returns; ``pool_size`` is the input size over the last feature
  level's reduction; the factory's default ``num_classes`` is the cfg's; ``resolve_model_data_config`` gives the cfg's
  preprocessing for models built by timm and by ``bramley.core.create_model``, and ``create_transform`` makes inputs
  of that size; ``list_models(name_matches_cfg=True)`` lists the model.
- **forward / backward**: logits, ``forward_features`` (``num_features`` channels at the last reduction),
  ``forward_head`` with and without ``pre_logits`` (``head_hidden_size``); every parameter gets a finite gradient, and
  ``set_grad_checkpointing()`` gives the same outputs and gradients.
- **factory**: ``timm.create_model(device=..., dtype=...)`` builds every parameter and buffer there (timm's cfg test
  builds on the meta device); an unknown argument raises ``TypeError``.
- **classifier**: ``reset_classifier`` to 0 (pooled ``pre_logits``), to 10 classes, and ``(0, "")`` (the unpooled
  map), then to 10 classes again (average pooling comes back); ``create_model(num_classes=0, global_pool="")``
  returns the unpooled map too.
- **intermediates**: ``forward_intermediates`` ends in ``forward_features``' output, one map per ``feature_info``
  level (channels, reduction); ``indices`` and ``prune_intermediate_layers`` keep the same maps.
- **features_only**: timm's default ``FeatureListNet`` and ``feature_cls="getter"`` give the model's own
  intermediates and its ``feature_info``; the weights come from a ``save_pretrained`` folder loaded the timm way
  (``pretrained=True, pretrained_cfg_overlay=dict(file=...)``), so that path is checked on every model too.
- **fx**: ``torch.fx.symbolic_trace`` of the eval model gives identical outputs; of the train model, the gradients of
  eager mode.
- **TorchScript**: ``torch.jit.script`` of the train-time structure and of its fx graph (timm's tests) agree with
  eager (1e-5 of the output scale: the scripted attention is PyTorch's SDPA, eager mode runs
  ``bramley.core.ops.attention``).
- **reparameterize**: timm's ``reparameterize_model`` gives bramley's fused structure and outputs (1e-5) on every
  model, siblings included, and the fused model saved with ``save_pretrained`` loads through timm's
  ``pretrained=True`` as the fused structure, with identical outputs.

Sizes and budget: 64 px inputs (every map stays at least 2x2), batch 2, one torch thread, each model built once per
module (with BatchNorm statistics moved off their initial values by a train-mode pass) and deep-copied per check. timm's
own ``tests/test_models.py`` checks the same models at their registered sizes (see bramley-core's CHANGELOG).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import FeatureListNet
from timm.models._features import FeatureGetterNet
from timm.utils.model import reparameterize_model as timm_reparameterize_model

from bramley.core.checkpoint import save_pretrained
from bramley.core.cli import discover_methods
from bramley.core.layers import reparameterize_model
from bramley.core.registry import TIMM_PREFIX, create_model, get_model_entry, list_models

IMAGE_SIZE = 64
NUM_CLASSES = 10
RTOL = 1e-5  # scripted / timm-fused vs eager / bramley-fused, relative to the output scale
REQUIRED_CFG = (
    "input_size",
    "pool_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "num_classes",
    "first_conv",
    "classifier",
    "license",
    "paper_ids",
)
DATA_CONFIG = ("input_size", "interpolation", "mean", "std", "crop_pct")
#: Factory arguments of the checked builds (first matching pattern): FastViT variants run with one block per stage,
#: which keeps each variant's widths, token mixers, RepCPE, squeeze-excite and head (what the checks exercise) at a
#: fraction of the cost (the 6-6-18-6 variants took 5 s per check at full depth); their cfgs are checked at full size.
KWARGS = {"fastvit_*": {"layers": (1, 1, 1, 1)}, "*": {}}


#: Variants whose code paths another variant already runs (same model class and module types, other widths or
#: depths): the expensive checks (grad checkpointing, fx, TorchScript, reparameterization) run on that sibling only.
#: ``test_siblings_share_their_code_paths`` holds every entry to it; a new model gets every check by default.
SIBLINGS = {
    "mobileone_s1": "mobileone_s0",  # k = 1 conv branch instead of 4
    "mobileone_s2": "mobileone_s0",
    "mobileone_s3": "mobileone_s0",
    "fastvit_t12": "fastvit_t8",
    "fastvit_s12": "fastvit_t8",
    "fastvit_sa24": "fastvit_sa12",
    "fastvit_sa36": "fastvit_sa12",
    "fastvit_ma36": "fastvit_sa12",
    "fastvit_mci1": "fastvit_mci0",
    "fastvit_mci2": "fastvit_mci0",
}


def kwargs_for(name: str) -> dict:
    return next(kw for pattern, kw in KWARGS.items() if fnmatch.fnmatchcase(name, pattern))


def _register_packages() -> list[str]:
    """Import every installed method package and call its ``register_timm()``, if it has one; the timm names."""
    names = []
    for ep in discover_methods().values():
        importlib.import_module(ep.module)
        package = sys.modules[ep.module.rpartition(".")[0]]
        if hasattr(package, "register_timm"):
            names += package.register_timm()
    return sorted(names)


TIMM_NAMES = _register_packages()
MODELS = sorted(n for n in list_models() if get_model_entry(n).pretrained_cfg is not None)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rtol * scale, f"{what}: differs by {err:.3g} (output scale {scale:.3g}, rtol {rtol:g})"


@dataclass
class Case:
    name: str
    timm_name: str
    model: nn.Module  # pristine, eval mode, 10 classes; checks get deep copies
    folder: Path  # the model's save_pretrained folder

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def skip_if_sibling_covers(self) -> None:
        if self.name in SIBLINGS:
            pytest.skip(f"{self.name} runs the code paths of {SIBLINGS[self.name]}, which this check covers")

    @property
    def reduction(self) -> int:
        return self.model.feature_info[-1]["reduction"]

    def inputs(self) -> torch.Tensor:
        return torch.randn(2, self.model.pretrained_cfg["input_size"][0], IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(scope="module", params=MODELS)
def case(request, tmp_path_factory) -> Iterator[Case]:
    threads = torch.get_num_threads()  # module-scoped fixtures run before the plugin's one-thread fixture
    torch.set_num_threads(int(os.environ.get("BRAMLEY_TEST_THREADS", "1")))
    try:
        torch.manual_seed(0)
        timm_name = TIMM_PREFIX + request.param
        model = timm.create_model(timm_name, num_classes=NUM_CLASSES, **kwargs_for(request.param))
        with torch.no_grad():  # running statistics off their initial values: fusion and loading have work to do
            model.train()(torch.randn(4, model.in_chans, IMAGE_SIZE, IMAGE_SIZE))
        folder = tmp_path_factory.mktemp(request.param)
        save_pretrained(model.eval(), folder)
    finally:
        torch.set_num_threads(threads)
    yield Case(request.param, timm_name, model, folder)
    for file in folder.iterdir():  # the larger models write 100-180 MB each
        file.unlink()


def test_discovery():
    assert MODELS, "no installed package registers a model with a timm pretrained_cfg"
    assert sorted(TIMM_PREFIX + n for n in MODELS) == TIMM_NAMES, (
        "the packages' register_timm() must register exactly their models with a pretrained_cfg"
    )
    assert set(TIMM_NAMES) <= set(timm.list_models(name_matches_cfg=True))
    assert not set(TIMM_NAMES) & set(timm.list_models(pretrained=True)), "bramley publishes no weights"


def test_siblings_share_their_code_paths():
    def signature(name: str) -> tuple[type, set[type]]:
        with torch.device("meta"):
            model = create_model(name, **kwargs_for(name))
        return type(model), {type(m) for m in model.modules()}

    assert set(SIBLINGS) <= set(MODELS) and set(SIBLINGS.values()) <= set(MODELS) - set(SIBLINGS)
    for name, sibling in SIBLINGS.items():
        assert signature(name) == signature(sibling), f"{name} has modules that {sibling} does not run"


def test_cfg(case: Case):
    model, cfg = case.model, case.model.pretrained_cfg
    registered = get_model_entry(case.name).pretrained_cfg
    assert {k: cfg.get(k) for k in registered} == dict(registered) and cfg["architecture"] == case.timm_name
    missing = [k for k in REQUIRED_CFG if cfg.get(k) in (None, "", ())]
    assert not missing, f"pretrained_cfg lacks {missing}"
    assert not any(cfg.get(k) for k in ("url", "file", "hf_hub_id")), "no weight source: bramley publishes none"
    state = model.state_dict()
    channels, *size = cfg["input_size"]
    first = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    for name in first:
        assert f"{name}.weight" in state and model.get_submodule(name).in_channels == channels, name
    assert f"{cfg['classifier']}.weight" in state and model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert tuple(cfg["pool_size"]) == tuple(s // case.reduction for s in size)
    with torch.device("meta"):  # the registered model at full size, and as bramley builds it, without weights
        default, bramley_built = timm.create_model(case.timm_name), create_model(case.name)
    assert default.num_classes == cfg["num_classes"] and default.feature_info[-1]["reduction"] == case.reduction
    for name in (*first, cfg["classifier"]):
        default.get_submodule(name)
    for built in (model, default, bramley_built):
        config = timm.data.resolve_model_data_config(built)
        assert {k: config[k] for k in DATA_CONFIG} == {k: cfg[k] for k in DATA_CONFIG}
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    assert transform(Image.new("RGB", (300, 280))).shape == tuple(cfg["input_size"])


def test_forward_and_backward(case: Case):
    model, x = case.fresh(), case.inputs()
    with torch.no_grad():
        out, features = model(x), model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
        side = IMAGE_SIZE // case.reduction
        assert features.shape == (2, model.num_features, side, side)
        assert pre_logits.shape == (2, model.head_hidden_size)
        assert torch.equal(model.forward_head(features), out)
    model.train()
    (model(x) * torch.randn(2, NUM_CLASSES)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:10]}"


def test_grad_checkpointing(case: Case):
    case.skip_if_sibling_covers()
    x, weights = case.inputs(), torch.randn(2, NUM_CLASSES)
    plain, checkpointed = case.fresh(), case.fresh()
    checkpointed.set_grad_checkpointing()
    with torch.no_grad():
        assert torch.equal(checkpointed(x), plain(x))
    for m in (plain, checkpointed):
        (m.train()(x) * weights).sum().backward()
    grads = dict(plain.named_parameters())
    for name, p in checkpointed.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, msg=f"gradient of {name} with grad checkpointing")


def test_factory_device_and_dtype(case: Case):
    """timm's ``create_model(device=..., dtype=...)`` puts every parameter and buffer there; unknown arguments raise."""
    model = timm.create_model(case.timm_name, device="meta", dtype=torch.float64, **kwargs_for(case.name))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.device.type for t in tensors.values()} == {"meta"}
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float64}
    assert all(t.dtype == torch.int64 for t in tensors.values() if not t.is_floating_point())  # BN's step counts
    model.reset_classifier(NUM_CLASSES)  # a new classifier where the model lives
    assert {(p.device.type, p.dtype) for p in model.get_classifier().parameters()} == {("meta", torch.float64)}
    with pytest.raises(TypeError):
        timm.create_model(case.timm_name, device="meta", not_a_model_arg=1)


def test_reset_classifier_and_global_pool(case: Case):
    model, x = case.fresh(), case.inputs()
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(x), pre_logits)
        model.reset_classifier(NUM_CLASSES)
        assert model(x).shape == (2, NUM_CLASSES) and model.get_classifier().out_features == NUM_CLASSES
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
        model.reset_classifier(NUM_CLASSES)  # a classifier on the unpooled model brings average pooling back
        assert model.global_pool == "avg" and model(x).shape == (2, NUM_CLASSES)
        assert model.model_config["kwargs"]["global_pool"] == "avg"
        with torch.device("meta"):  # shapes only: no weights to allocate, no arithmetic
            unpooled = timm.create_model(case.timm_name, num_classes=0, global_pool="", **kwargs_for(case.name))
            side = IMAGE_SIZE // case.reduction
            assert unpooled.eval()(x.to("meta")).shape == (2, unpooled.num_features, side, side)


def test_forward_intermediates(case: Case):
    model, x = case.fresh(), case.inputs()
    info = model.feature_info
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [f.shape[1:] for f in feats] == [
            (i["num_chs"], IMAGE_SIZE // i["reduction"], IMAGE_SIZE // i["reduction"]) for i in info
        ]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, feats[-2:], strict=True))
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and len(model.stages) == 2 and model.num_classes == 0
        pruned = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(pruned, feats[:2], strict=True))


@pytest.mark.parametrize("feature_cls", [None, "getter"], ids=["default", "getter"])
def test_features_only_from_a_local_checkpoint(case: Case, feature_cls: str | None):
    extractor = timm.create_model(
        case.timm_name,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(case.folder)),
        features_only=True,
        feature_cls=feature_cls,
    ).eval()
    assert isinstance(extractor, FeatureGetterNet if feature_cls else FeatureListNet)
    info = case.model.feature_info
    assert extractor.feature_info.channels() == [i["num_chs"] for i in info]
    assert extractor.feature_info.reduction() == [i["reduction"] for i in info]
    assert extractor.feature_info.module_name() == [i["module"] for i in info]
    assert extractor.default_cfg["input_size"] == case.model.pretrained_cfg["input_size"]
    x = case.inputs()
    with torch.no_grad():
        expected = case.model.forward_intermediates(x, intermediates_only=True)
        got = extractor(x)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_fx_trace_forward_and_backward(case: Case):
    case.skip_if_sibling_covers()
    model, x = case.fresh(), case.inputs()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    eager, graph = case.fresh().train(), torch.fx.symbolic_trace(case.fresh().train())
    weights = torch.randn(2, NUM_CLASSES)
    for m in (eager, graph):
        (m(x) * weights).sum().backward()
    eager_grads = dict(eager.named_parameters())
    for name, p in graph.named_parameters():
        assert p.grad is not None, f"fx graph: no gradient for {name}"
        torch.testing.assert_close(p.grad, eager_grads[name].grad, msg=f"fx graph: gradient of {name}")
    assert len(eager_grads) == len(dict(graph.named_parameters()))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript(case: Case):
    case.skip_if_sibling_covers()
    model, x = case.fresh(), case.inputs()
    with torch.no_grad():
        expected = model(x)
        _close(torch.jit.script(model)(x), expected, RTOL, "scripted vs eager")
        _close(torch.jit.script(torch.fx.symbolic_trace(model))(x), expected, RTOL, "scripted fx graph vs eager")


def test_timm_reparameterize_matches_bramley_fusion(case: Case):
    """Every model, siblings included: the fusion is what each variant's own branches (kernel sizes, k) make."""
    model, x = case.fresh(), case.inputs()
    with torch.no_grad():
        fused, timm_fused = reparameterize_model(model), timm_reparameterize_model(model)
        # timm also folds each ConvNorm through its fuse() (FastViT's MLP conv, which bramley's fusion keeps, as the
        # official code does): the structures differ there, the outputs may not
        norms = [sum(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in m.modules()) for m in (timm_fused, fused)]
        assert norms[0] <= norms[1] < sum(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in model.modules())
        _close(timm_fused(x), fused(x), RTOL, "timm.utils.reparameterize_model vs bramley's")
        _close(fused(x), model(x), RTOL, "fused vs unfused")


def test_load_fused_the_timm_way(case: Case, tmp_path):
    case.skip_if_sibling_covers()
    model, x = case.fresh(), case.inputs()
    fused = reparameterize_model(model)
    with torch.no_grad():
        expected = fused(x)
        save_pretrained(fused, tmp_path)
        loaded = timm.create_model(case.timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)))
        assert loaded.model_config["kwargs"]["inference_mode"] is True
        assert torch.equal(loaded.eval()(x), expected)
