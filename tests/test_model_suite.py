"""The shared model suite: every registered model of every installed method package passes the same checks.

Discovery: each installed method package is imported through its ``bramley.cli`` entry point (importing
``bramley.<method>``, whose ``__init__`` registers its models), then every name in
:func:`bramley.core.registry.list_models` is a test case. A package that registers a model gets it checked with no
change here; its inputs come from ``register_model(example_inputs=... | input_size=...)``
(:meth:`~bramley.core.registry.ModelEntry.make_example_inputs`).

Checks (the ``check_*`` functions below; ``test_checks_catch_broken_models`` proves each one fails on a broken toy):

- **forward** (every model): eval mode, ``torch.inference_mode``; every floating output is finite and a second
  call returns the same values (no randomness or state left on in eval mode).
- **channels_last** (every model with 4-D parameters; the fused form of each package's smallest model too): eval
  outputs under :func:`bramley.core.layers.channels_last_inference` (how the image ``eval`` verb runs convolutions)
  equal NCHW's within 1e-5 of the output scale, and every parameter has its own memory back afterwards (a
  ``.view()`` that assumes a contiguous weight fails here).
- **backward** (every model): train mode, a random projection of every floating output is back-propagated; every
  trainable parameter gets a finite gradient. Parameters that ``forward`` legitimately never touches are declared
  per model in ``SETTINGS`` (``no_grad``) and must then get *no* gradient, so a stale declaration fails too.
- **round trip** (expensive, see below): one train-mode forward moves BatchNorm statistics off their initial
  values, then ``save_pretrained`` / ``from_pretrained`` (safetensors + config.json) must rebuild a model with the
  same state dict and bit-identical eval outputs (a forgotten buffer or unsaved constructor argument fails here).
- **TorchScript** (expensive): ``torch.jit.trace`` of the eval model in its deployment form (fused when it is
  reparameterizable), compared with eager on *fresh* inputs, so values baked into the trace are caught. Keyword
  tensors (``cu_seqlens=``) are passed through a small adapter; non-tensor inputs are fixed, as in any trace.
  Tracing the unfused form too doubled the suite's slowest check (37 s for all models on a loaded 2-core machine);
  graph capture of the train-time form is covered by the torch.compile check below. The installed torch (2.15)
  deprecates ``torch.jit.trace`` (FutureWarning) in favour of ``torch.export``, but an export costs 1-3 s per model
  here against 0.2-0.4 s for a trace: exporting every model would take half the suite's budget.
- **reparameterize** (expensive; models with a ``reparameterize()`` submodule): BatchNorm statistics and affine
  parameters are randomised (fusion with the initial mean 0 / var 1 would hide mistakes), then
  :func:`bramley.core.layers.reparameterize_model` must give the same eval outputs (max error <= 1e-4 x the output
  scale), timm's own ``timm.utils.reparameterize_model`` must give bramley's fused outputs (1e-5), fewer
  parameters, an idempotent second fusion, and, when the model class takes ``inference_mode``, a state dict that
  loads strictly into the model built fused from the registry with the same outputs (the deployment path).
- **torch.compile** (the smallest model of each package, by parameter count): ``fullgraph=True`` (no graph breaks)
  with the ``aot_eager`` backend, train-mode forward + backward equal to eager. ``aot_eager`` runs Dynamo capture,
  functionalization and AOTAutograd's backward graph (what fails for real models: graph breaks, data-dependent
  control flow, custom ops without fake kernels) but skips Inductor's C++ code generation, which costs 30 s (eval)
  to 2 min (train) per model on 2 CPU cores (measured on fastvit_t8) and tests torch rather than our models. One
  model per package because even ``aot_eager`` costs 1-15 s per model; TorchScript covers the others cheaply.
  A known failure is a strict xfail with its reason (``Settings.compile_xfail``): it must go once the model compiles.

Sizes and budget (the file must stay under 90 s on an idle 2-core machine; it uses one core: 60-71 s of CPU time
measured for 26 models, 85-96 s wall at load average 4-6):

- Image models run at ``IMAGE_SIZE`` (64 px; FastViT and MobileOne also work at 32, but their trunks reduce 32x:
  at 64 px the last stage keeps a 2x2 map, so fused 3x3 / 7x7 kernels are exercised off-centre) or their registered
  size if smaller; classifiers get ``num_classes=10``.
- ``SETTINGS`` shrinks what is too big to build at all on 2 CPU cores (``MAX_PARAMS``; e.g. the 1B GPT as one block
  of its real width): a new model over the budget fails ``test_models_fit_the_suite_budget`` with a clear message
  rather than silently eating CI time.
- Forward and backward run on every model. The expensive checks (round trip, TorchScript, reparameterize: each
  deep-copies, writes or rebuilds the model) run on models up to ``EXPENSIVE_MAX_PARAMS`` (15M) plus the smallest
  model of each package; the larger variants (fastvit_sa24/sa36/ma36/mci1/mci2, fct_resnet50, dd_gpt_1b,
  byteformer_tiny/base) are skipped with the reason, their code paths being covered by a smaller sibling
  (RepMixer by t8/t12/s12, attention stages by sa12, the MCi stem/SE downsampling by mci0, ...).
- Each model is built once per module (a module-scoped fixture, so pytest runs all checks of one model together
  and frees it before the next) and deep-copied per check.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn as nn

from bramley.core import registry
from bramley.core.checkpoint import check_state_dict, from_pretrained, save_pretrained
from bramley.core.cli import discover_methods
from bramley.core.layers import channels_last_inference, reparameterize_model
from bramley.core.registry import ExampleInputs, create_model, get_model_entry, list_models, register_model

IMAGE_SIZE = 64
MAX_PARAMS = 60_000_000  # per model with the suite's kwargs: larger ones need a shrinking SETTINGS entry
EXPENSIVE_MAX_PARAMS = 15_000_000  # round trip, trace, reparameterize: only up to this size (+ each package's smallest)
REPARAM_RTOL = 1e-4  # fused vs unfused, relative to the largest output magnitude
TRACE_RTOL = 1e-5  # traced / compiled vs eager


@dataclass(frozen=True)
class Settings:
    """How the suite builds and checks one model (first matching pattern in ``SETTINGS`` wins)."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = IMAGE_SIZE  # image models: run at min(registered size, this); None = registered size
    no_grad: tuple[str, ...] = ()  # fnmatch patterns of parameters forward() never uses (must get no gradient)
    shape: tuple[int, ...] | None = None  # expected shape of a single-tensor output, when it says something
    compile_xfail: str = ""  # a known torch.compile(fullgraph=True) failure: the test is a strict xfail


_BYTEFORMER_COMPILE = (
    "the packed forward reads sizes from tensor values in Python: ByteFormer._check_packed, "
    "bramley.core.packing (int(cu_seqlens[-1]) in lengths/position ids; window_segments loops over .tolist() "
    "lengths, so the number of windows is data-dependent) and ops.attention's CPU backend, which reads cu_seqlens "
    "on the host; Dynamo cannot capture that with fullgraph=True (33 breaks with torch 2.15); allowing graph breaks "
    "it compiles"
)

SETTINGS: dict[str, Settings] = {
    "fastvit_*": Settings(kwargs={"num_classes": 10}, shape=(2, 10)),
    "mobileone_*": Settings(kwargs={"num_classes": 10}, shape=(2, 10)),
    "fct_resnet*": Settings(kwargs={"num_classes": 10}, shape=(2, 10)),
    "fct_convnet": Settings(kwargs={"num_classes": 7}, shape=(2, 7)),
    # the SimCLR projection head only serves the training loss (SideInfoModel.project), never forward()
    "fct_side_info": Settings(no_grad=("head.*",), shape=(2, 32)),
    "fct_transformation": Settings(kwargs={"inner_dim": 256, "new_dim": 64}, shape=(2, 64)),
    # one block of the OpenLM-410M / 1B shapes: width, heads, MLP size, RoPE base and context length stay covered
    "dd_gpt_410m": Settings(kwargs={"depth": 1}),
    "dd_gpt_1b": Settings(kwargs={"depth": 1}),
    # ByteFormer: packed bytes. Small / base run as two blocks (the first two of the default window-shift and
    # downsampling pattern) with a short positional table; tiny runs as registered.
    "byteformer_tiny": Settings(kwargs={"num_classes": 10}, shape=(2, 10), compile_xfail=_BYTEFORMER_COMPILE),
    "byteformer_*": Settings(
        kwargs={
            "num_classes": 10,
            "depth": 2,
            "window_shifts": (0, 64),
            "downsample": (True, True),
            "max_num_tokens": 1000,
        },
        shape=(2, 10),
        compile_xfail=_BYTEFORMER_COMPILE,
    ),
    # MobileCLIP: S1 / S2 / B are 85-150M parameters; one text block on a 1,000-token vocabulary (the suite's token
    # ids stay below it) and a shallow image tower keep every code path (RepMixer and attention stages, the ViT-B/16
    # tower, pooling at the end-of-text token) at 9-19M
    "mobileclip_b": Settings(kwargs={"text_kwargs": {"layers": 1, "vocab_size": 1000}, "image_kwargs": {"depth": 2}}),
    "mobileclip_s0": Settings(),
    "mobileclip_*": Settings(
        kwargs={"text_kwargs": {"layers": 1, "vocab_size": 1000}, "image_kwargs": {"layers": [1, 1, 2, 1]}}
    ),
    "*": Settings(),
}


def settings_for(name: str) -> Settings:
    return next(s for pattern, s in SETTINGS.items() if fnmatch.fnmatchcase(name, pattern))


# -------------------------------------------------------------------------------------------------------- discovery
def _import_method_packages() -> list[str]:
    """Import every installed method package (its CLI module and so its ``__init__``): models register on import."""
    methods = discover_methods()
    for ep in methods.values():
        importlib.import_module(ep.module)
    return list(methods)


METHODS = _import_method_packages()
MODELS = list_models()


def make_inputs(name: str) -> ExampleInputs:
    """The suite's inputs for model ``name``: its registered example inputs, images at the suite's size."""
    entry = get_model_entry(name)
    size = settings_for(name).image_size
    if entry.example_inputs is None and size is not None and size < min(entry.input_size[1:]):
        return entry.make_example_inputs(image_size=size)
    return entry.make_example_inputs()


def build(name: str) -> nn.Module:
    return create_model(name, **settings_for(name).kwargs)


@functools.cache
def count_parameters(name: str, real: bool = False) -> int | None:
    """Parameters of ``build(name)``, counted on the meta device (no memory, no init); ``None`` if the factory cannot
    build there (e.g. it calls ``.tolist()``) unless ``real``, which then builds it for real."""
    try:
        with torch.device("meta"):
            model = build(name)
    except (NotImplementedError, RuntimeError):  # "Cannot copy out of meta tensor"
        if not real:
            return None
        model = build(name)
    return sum(p.numel() for p in model.parameters())


def smallest_model(package: str) -> str:
    return min(list_models(package=package), key=lambda n: (count_parameters(n, real=True), n))


# ------------------------------------------------------------------------------------------------------ the checks
def float_tensors(out: Any, path: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a (nested) tensor / tuple / list / dict output, with its path."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.is_complex():
            yield path, out
    elif isinstance(out, tuple | list):
        for i, item in enumerate(out):
            yield from float_tensors(item, f"{path}[{i}]")
    elif isinstance(out, dict):
        for key, item in out.items():
            yield from float_tensors(item, f"{path}[{key!r}]")


def _outputs(out: Any) -> list[tuple[str, torch.Tensor]]:
    found = list(float_tensors(out))
    if not found:
        raise AssertionError(f"forward returned no floating-point tensor (got {type(out).__name__})")
    return found


def _run(model: nn.Module, inputs: ExampleInputs) -> Any:
    args, kwargs = inputs
    return model(*args, **kwargs)


def _assert_close(actual: Any, expected: Any, rtol: float, what: str) -> None:
    """Max error of every floating output <= ``rtol`` x that output's largest magnitude (exact when rtol == 0)."""
    got, want = _outputs(actual), _outputs(expected)
    if [p for p, _ in got] != [p for p, _ in want]:
        raise AssertionError(f"{what}: output structure differs: {[p for p, _ in got]} vs {[p for p, _ in want]}")
    for (path, a), (_, b) in zip(got, want, strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"{what}: {path} has shape {tuple(a.shape)}, expected {tuple(b.shape)}")
        err = (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0
        scale = b.detach().double().abs().max().item() if b.numel() else 0.0
        if not err <= rtol * scale + (1e-7 if rtol else 0.0):
            raise AssertionError(f"{what}: {path} differs by {err:.3g} (output scale {scale:.3g}, rtol {rtol:g})")


def check_forward(model: nn.Module, make: Callable[[], ExampleInputs], shape: tuple[int, ...] | None = None) -> None:
    """Eval-mode forward: finite floating outputs (of ``shape`` if given), the same values on a second call."""
    model.eval()
    inputs = make()
    with torch.inference_mode():
        first, second = _run(model, inputs), _run(model, inputs)
    if shape is not None and not (isinstance(first, torch.Tensor) and first.shape == shape):
        got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise AssertionError(f"forward: output is {got}, expected shape {shape}")
    for path, t in _outputs(first):
        if not torch.isfinite(t).all():
            raise AssertionError(f"forward: {path} has {(~torch.isfinite(t)).sum().item()} non-finite values")
    _assert_close(second, first, 0.0, "forward called twice in eval mode")


def check_channels_last(model: nn.Module, make: Callable[[], ExampleInputs]) -> None:
    """Eval outputs under :func:`bramley.core.layers.channels_last_inference` (convolution weights in
    channels_last, how the image ``eval`` verb runs) equal NCHW's to float rounding (1e-5 of the output scale), and
    every parameter gets its own tensor back afterwards."""
    model.eval()
    inputs = make()
    before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    with torch.inference_mode():
        expected = _run(model, inputs)
    try:
        with channels_last_inference(model):
            actual = _run(model, inputs)
    except RuntimeError as e:  # e.g. a .view() that assumes a contiguous weight
        raise AssertionError(f"channels_last: forward failed: {e}") from e
    _assert_close(actual, expected, 1e-5, "channels_last vs NCHW")
    changed = [name for name, p in model.named_parameters() if (p.data_ptr(), p.stride()) != before[name]]
    if changed:
        raise AssertionError(f"channels_last_inference left {len(changed)} parameters replaced: {changed[0]}")


def check_backward(model: nn.Module, make: Callable[[], ExampleInputs], no_grad: tuple[str, ...] = ()) -> None:
    """Train-mode backward: every trainable parameter gets a finite gradient, except the declared ``no_grad`` ones.

    The loss is a fixed random projection of every floating output (a plain sum can be invariant to parameters,
    e.g. the sum of a softmax).
    """
    model.train()
    model.zero_grad(set_to_none=True)
    outputs = [(p, t) for p, t in _outputs(_run(model, make())) if t.requires_grad]
    if not outputs:
        raise AssertionError("backward: no floating output requires grad (is the model detached from its parameters?)")
    gen = torch.Generator().manual_seed(0)
    loss = sum((t.real * torch.randn(t.shape, generator=gen, dtype=t.real.dtype)).sum() for _, t in outputs)
    loss.backward()
    params = dict(model.named_parameters())
    stale = [pat for pat in no_grad if not any(fnmatch.fnmatchcase(n, pat) for n in params)]
    if stale:
        raise AssertionError(f"backward: no_grad patterns match no parameter: {stale}")
    missing, nonfinite, unexpected = [], [], []
    for n, p in params.items():
        if not p.requires_grad:
            continue
        if any(fnmatch.fnmatchcase(n, pat) for pat in no_grad):
            if p.grad is not None:
                unexpected.append(n)
        elif p.grad is None:
            missing.append(n)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(n)
    for title, names in (
        ("parameters got no gradient", missing),
        ("parameters got non-finite gradients", nonfinite),
        ("parameters declared no_grad got a gradient", unexpected),
    ):
        if names:
            more = " ..." if len(names) > 10 else ""
            raise AssertionError(f"backward: {len(names)} {title}: {', '.join(names[:10])}{more}")


def check_round_trip(model: nn.Module, make: Callable[[], ExampleInputs], directory) -> None:
    """``save_pretrained`` -> ``from_pretrained`` rebuilds the same state dict and bit-identical eval outputs."""
    inputs = make()
    model.train()
    with torch.no_grad():
        _run(model, inputs)  # running statistics leave their initial values: they must be saved too
    model.eval()
    with torch.inference_mode():
        expected = _run(model, inputs)
    save_pretrained(model, directory)
    loaded = from_pretrained(directory)
    if loaded.training:
        raise AssertionError("from_pretrained returned a model in train mode")
    state, loaded_state = model.state_dict(), loaded.state_dict()
    if set(state) != set(loaded_state):
        raise AssertionError(f"round trip: state dict keys differ: {sorted(set(state) ^ set(loaded_state))[:10]}")
    changed = [k for k in state if not torch.equal(state[k], loaded_state[k])]
    if changed:
        raise AssertionError(f"round trip: {len(changed)} tensors changed: {changed[:10]}")
    with torch.inference_mode():
        _assert_close(_run(loaded, inputs), expected, 0.0, "round trip (from_pretrained vs saved model)")


class _TensorsOnly(nn.Module):
    """Calls ``model`` with the tensors given positionally put back into an example's args / kwargs layout.

    ``torch.jit.trace`` takes positional tensors only: keyword tensors (``cu_seqlens=...``) are mapped back to their
    names and non-tensor values (``max_seqlen=7``) are fixed, as a trace fixes every Python value anyway.
    """

    def __init__(self, model: nn.Module, inputs: ExampleInputs):
        super().__init__()
        self.model = model
        args, kwargs = inputs
        self.args = [None if isinstance(a, torch.Tensor) else a for a in args]
        self.kwargs = {k: None if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    @staticmethod
    def tensors(inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
        args, kwargs = inputs
        return tuple(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))

    def forward(self, *tensors: torch.Tensor) -> Any:
        given = iter(tensors)
        args = [next(given) if a is None else a for a in self.args]
        kwargs = {k: next(given) if v is None else v for k, v in self.kwargs.items()}
        return self.model(*args, **kwargs)


def check_scripted(model: nn.Module, make: Callable[[], ExampleInputs]) -> None:
    """``torch.jit.trace`` of the eval model agrees with eager on fresh inputs (values baked into the trace fail)."""
    model.eval()
    example, fresh = make(), make()
    bound, again = _TensorsOnly(model, example), _TensorsOnly(model, fresh)
    if (bound.args, list(bound.kwargs.items())) != (again.args, list(again.kwargs.items())):
        raise AssertionError("trace: the non-tensor example inputs differ between calls of example_inputs")
    with torch.no_grad(), warnings.catch_warnings():
        # expected: TracerWarnings (shape checks become constants) and, in torch >= 2.10, trace's FutureWarning
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(bound, _TensorsOnly.tensors(example), check_trace=False, strict=False)
        got = traced(*_TensorsOnly.tensors(fresh))
        _assert_close(got, _run(model, fresh), TRACE_RTOL, "trace vs eager on fresh inputs")


def is_reparameterizable(model: nn.Module) -> bool:
    return any(callable(getattr(m, "reparameterize", None)) for m in model.modules())


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that fusing them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def check_reparameterize(
    model: nn.Module, make: Callable[[], ExampleInputs], rebuild_fused: Callable[[], nn.Module] | None = None
) -> None:
    """Fused == unfused in eval mode, and equal to timm's own ``reparameterize_model`` (which replaces every module
    that has ``fuse()`` by what it returns, top down); fusion removes parameters and is idempotent; the fused state
    dict loads into ``rebuild_fused()`` (the model built with ``inference_mode=True``) with the same outputs."""
    from timm.utils.model import reparameterize_model as timm_reparameterize_model

    randomize_batchnorm(model)
    model.eval()
    inputs = make()
    fused = reparameterize_model(model)
    try:
        timm_fused = timm_reparameterize_model(model)
    except Exception as e:  # e.g. a fuse() that returns tensors: timm puts what it returns in the module's place
        raise AssertionError(f"timm.utils.reparameterize_model failed: {type(e).__name__}: {e}") from e
    with torch.inference_mode():
        expected, got, timm_got = _run(model, inputs), _run(fused, inputs), _run(timm_fused, inputs)
    _assert_close(got, expected, REPARAM_RTOL, "reparameterized vs unfused")
    _assert_close(timm_got, got, 1e-5, "timm.utils.reparameterize_model vs bramley's fusion")
    n_unfused, n_fused = (sum(p.numel() for p in m.parameters()) for m in (model, fused))
    if not n_fused < n_unfused:
        raise AssertionError(f"reparameterize: fused model has {n_fused} parameters, unfused {n_unfused} (no fusion)")
    state = fused.state_dict()
    again = reparameterize_model(fused).state_dict()
    if set(again) != set(state) or any(not torch.equal(state[k], again[k]) for k in state):
        raise AssertionError("reparameterize: fusing the fused model again changed it (not idempotent)")
    if rebuild_fused is not None:
        deployed = rebuild_fused().eval()
        check_state_dict(deployed, state, source="fused state dict")
        deployed.load_state_dict(state)
        with torch.inference_mode():
            _assert_close(_run(deployed, inputs), got, 0.0, "model built fused (inference_mode=True) vs fused")


def check_compiled(model: nn.Module, make: Callable[[], ExampleInputs]) -> None:
    """``torch.compile(fullgraph=True, backend="aot_eager")``: train-mode outputs and gradients equal eager."""
    import torch._dynamo

    model.train()
    eager = copy.deepcopy(model)
    inputs = make()
    gen = torch.Generator().manual_seed(0)
    try:
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        outs = []
        for m in (compiled, eager):
            out = _run(m, inputs)
            weights = [torch.randn(t.shape, generator=gen.manual_seed(i)) for i, (_, t) in enumerate(_outputs(out))]
            sum((t * w).sum() for (_, t), w in zip(_outputs(out), weights, strict=True)).backward()
            outs.append(out)
        _assert_close(outs[0], outs[1], TRACE_RTOL, "torch.compile vs eager (train forward)")
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        eager_grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
        if set(grads) != set(eager_grads):
            raise AssertionError(f"torch.compile: gradients of {sorted(set(grads) ^ set(eager_grads))[:10]} differ")
        names = sorted(grads)
        _assert_close([grads[n] for n in names], [eager_grads[n] for n in names], 1e-4, "torch.compile gradients")
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------- the tests
@dataclass
class Case:
    name: str
    model: nn.Module  # pristine, built once per module; checks get deep copies
    settings: Settings
    n_params: int
    smallest: bool  # the smallest model of its package
    expensive: bool  # run the expensive checks (see the module docstring)

    def skip_unless_expensive(self) -> None:
        if not self.expensive:
            pytest.skip(
                f"{self.name}: {self.n_params / 1e6:.1f}M parameters > {EXPENSIVE_MAX_PARAMS / 1e6:.0f}M; "
                "its code paths are checked on the smaller variants of its package"
            )

    def make(self) -> ExampleInputs:
        return make_inputs(self.name)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)


@pytest.fixture(scope="module", params=MODELS)
def case(request) -> Iterator[Case]:
    # module-scoped fixtures run before the plugin's per-test seed and one-thread fixtures: do both here (the
    # default two OpenMP threads made building the large models 5-8x slower on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BRAMLEY_TEST_THREADS", "1")))
    try:
        if (count_parameters(request.param) or 0) > MAX_PARAMS:  # fail before building a huge model
            pytest.fail(f"{request.param} is too big for the suite (see test_models_fit_the_suite_budget)")
        torch.manual_seed(0)
        model = build(request.param)
        n_params = sum(p.numel() for p in model.parameters())
        if n_params > MAX_PARAMS:  # a factory that cannot build on the meta device
            pytest.fail(f"{request.param} has {n_params:,} parameters, over the suite's budget of {MAX_PARAMS:,}")
        name = request.param
        smallest = name == smallest_model(get_model_entry(name).package)
    finally:
        torch.set_num_threads(threads)
    yield Case(name, model, settings_for(name), n_params, smallest, n_params <= EXPENSIVE_MAX_PARAMS or smallest)


def test_discovery():
    assert METHODS, "no method package is installed (entry point group bramley.cli)"
    assert MODELS, "no model is registered by the installed method packages"
    unmatched = [p for p in SETTINGS if p != "*" and not any(fnmatch.fnmatchcase(n, p) for n in MODELS)]
    assert not unmatched, f"SETTINGS patterns that match no registered model (renamed?): {unmatched}"


def test_models_fit_the_suite_budget():
    """Building a 400M-parameter model would take the suite's whole time budget: big variants must be shrunk.

    Counted on the meta device; factories that cannot build there are checked by the ``case`` fixture instead.
    """
    big = {n: count_parameters(n) for n in MODELS if (count_parameters(n) or 0) > MAX_PARAMS}
    assert not big, (
        f"models over {MAX_PARAMS:,} parameters with the suite's kwargs: {big}; add SETTINGS entries that shrink "
        "them (e.g. fewer blocks: the variant's width, heads and other settings stay covered)"
    )


def test_forward(case: Case):
    check_forward(case.fresh(), case.make, case.settings.shape)


def test_channels_last(case: Case):
    model = case.fresh()
    if not any(p.dim() == 4 for p in model.parameters()):
        pytest.skip(f"{case.name} has no 4-D parameters (no convolutions)")
    check_channels_last(model, case.make)
    if case.smallest and is_reparameterizable(model):  # the deployment form too (`eval --fuse`), once per package
        check_channels_last(reparameterize_model(model.eval()), case.make)


def test_backward(case: Case):
    check_backward(case.fresh(), case.make, case.settings.no_grad)


def test_save_pretrained_round_trip(case: Case, tmp_path):
    case.skip_unless_expensive()
    check_round_trip(case.fresh(), case.make, tmp_path / case.name)


def test_torchscript(case: Case):
    case.skip_unless_expensive()
    model = case.fresh().eval()
    check_scripted(reparameterize_model(model) if is_reparameterizable(model) else model, case.make)


def test_reparameterize(case: Case):
    model = case.fresh()
    if not is_reparameterizable(model):
        pytest.skip(f"{case.name} has no reparameterizable blocks")
    case.skip_unless_expensive()
    rebuild = None
    if "inference_mode" in inspect.signature(type(model).__init__).parameters:
        kwargs = {**case.settings.kwargs, "inference_mode": True}

        def rebuild() -> nn.Module:
            return create_model(case.name, **kwargs)

    check_reparameterize(model, case.make, rebuild)


@pytest.mark.parametrize("package", sorted({get_model_entry(n).package for n in MODELS}))
def test_torch_compile(package: str, request):
    name = smallest_model(package)
    reason = settings_for(name).compile_xfail
    if reason:  # strict: once the model compiles, the mark must go; any other failure still fails
        from torch._dynamo.exc import TorchDynamoException

        mark = pytest.mark.xfail(reason=f"{name}: {reason}", strict=True, raises=TorchDynamoException)
        request.applymarker(mark)
    check_compiled(build(name), lambda: make_inputs(name))


# ---------------------------------------------------------------------------------------- the suite can fail
class Toy(nn.Module):
    """A small conv-BN classifier with a reparameterizable block; ``bug`` plants one defect for one check."""

    def __init__(self, bug: str = "", inference_mode: bool = False):
        super().__init__()
        self.bug = bug
        self.block = ToyRepBlock(3, 8, inference_mode=inference_mode, bug=bug)
        self.head = nn.Linear(8, 4)
        self.gate = nn.Parameter(torch.ones(4))
        # an attribute the checkpoint does not carry: a fresh random value per build
        self.register_buffer("scale", torch.rand(4) + 0.5, persistent=bug != "unsaved_buffer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.block(x).mean((2, 3)))
        gate = self.gate.detach() if self.bug == "detached_parameter" else self.gate
        if self.bug == "inf_gradient":
            gate = (gate - 1).abs().sqrt() + gate  # d/dx sqrt(|x|) at 0: inf
        y = y * gate * self.scale
        if self.bug == "wrong_shape":
            y = y[:, :3]
        if self.bug == "nan_output":
            y = y / torch.zeros_like(y[:, :1])
        if self.bug == "data_dependent_branch":
            y = y * 2 if x.mean() > 0 else y  # a trace freezes whichever branch the example took
        if self.bug == "eval_dropout":
            y = nn.functional.dropout(y, 0.5, training=True)
        return y


class ToyRepBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN branches (ReLU after the sum), fused into one 3x3 conv by ``reparameterize``."""

    def __init__(self, cin: int, cout: int, inference_mode: bool = False, bug: str = ""):
        super().__init__()
        self.bug = bug
        if inference_mode:
            self.reparam_conv = nn.Conv2d(cin, cout, 3, padding=1)
        else:
            self.conv3 = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
            self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        if bug == "fuse_returns_tensors":  # timm's fuse() convention is a module that replaces this one
            self.branch = Fusable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return torch.relu(self.reparam_conv(x))
        if self.bug == "weight_view":  # assumes a contiguous weight: this view of a channels_last one fails
            w = self.conv3[0].weight
            y = self.conv3[1](nn.functional.conv2d(x, w.view(len(w), -1).view_as(w), padding=1))
            return torch.relu(y + self.conv1(x))
        return torch.relu(self.conv3(x) + self.conv1(x))

    def reparameterize(self) -> None:
        if hasattr(self, "reparam_conv"):
            return
        from bramley.core.layers import fuse_conv_bn, pad_kernel

        w3, b3 = fuse_conv_bn(self.conv3[0].weight, self.conv3[1])
        w1, b1 = fuse_conv_bn(self.conv1[0].weight, self.conv1[1])
        if self.bug == "bad_fusion":
            b1 = torch.zeros_like(b1)  # forgets the 1x1 branch's BatchNorm shift
        conv = nn.Conv2d(w3.shape[1], w3.shape[0], 3, padding=1)
        conv.weight.data.copy_(w3 + pad_kernel(w1, 3))
        conv.bias.data.copy_(b3 + b1)
        self.reparam_conv = conv
        del self.conv3, self.conv1


class Fusable(nn.Identity):
    """A unit with ``fuse()`` returning ``(weight, bias)`` tensors, as bramley's ConvNorm once did."""

    def fuse(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(1), torch.zeros(1)


@pytest.fixture
def toy_registry(monkeypatch):
    """A private registry holding ``suite_toy`` (so from_pretrained can rebuild it); the real one is untouched."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model(name="suite_toy", input_size=8)(Toy)
    return lambda bug="", **kw: create_model("suite_toy", bug=bug, **kw)


def test_checks_pass_on_a_correct_toy(toy_registry, tmp_path):
    make = get_model_entry("suite_toy").make_example_inputs
    check_forward(toy_registry(), make)
    check_channels_last(toy_registry(), make)
    check_backward(toy_registry(), make)
    check_round_trip(toy_registry(), make, tmp_path)
    check_scripted(toy_registry(), make)
    check_reparameterize(toy_registry(), make, lambda: create_model("suite_toy", inference_mode=True))
    check_compiled(toy_registry(), make)


BROKEN = [  # (bug planted in Toy, the check that must catch it, its message)
    ("nan_output", check_forward, "forward: output has 8 non-finite values"),
    ("wrong_shape", check_forward, r"forward: output is \(2, 3\), expected shape \(2, 4\)"),
    ("eval_dropout", check_forward, "forward called twice in eval mode: output differs"),
    ("weight_view", check_channels_last, "channels_last: forward failed: view size is not compatible"),
    ("detached_parameter", check_backward, "backward: 1 parameters got no gradient: gate"),
    ("inf_gradient", check_backward, "backward: 1 parameters got non-finite gradients: gate"),
    ("unsaved_buffer", check_round_trip, r"round trip \(from_pretrained vs saved model\): output differs"),
    ("data_dependent_branch", check_scripted, "trace vs eager on fresh inputs: output differs"),
    ("bad_fusion", check_reparameterize, "reparameterized vs unfused: output differs"),
    ("fuse_returns_tensors", check_reparameterize, "timm.utils.reparameterize_model failed: TypeError"),
]


@pytest.mark.parametrize(("bug", "check", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_checks_catch_broken_models(toy_registry, tmp_path, bug, check, message):
    make = get_model_entry("suite_toy").make_example_inputs
    if bug == "data_dependent_branch":  # the trace takes the example's branch; fresh inputs take the other
        signs = iter([1.0, -1.0])
        make = lambda: ((next(signs) + 0.1 * torch.randn(2, 3, 8, 8),), {})  # noqa: E731
    extra = {check_round_trip: (tmp_path,), check_forward: ((2, 4),)}.get(check, ())
    with pytest.raises(AssertionError, match=message):
        check(toy_registry(bug), make, *extra)


class Mix(nn.Module):
    """``a`` and ``b`` mixed by a linear layer, scaled by a Python number (which a trace cannot take)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        return self.fc(a if b is None else a - b) * scale


@pytest.mark.parametrize(
    "inputs",
    [
        lambda: ((torch.randn(2, 8), torch.randn(2, 8)), {}),
        lambda: ((), {"a": torch.randn(2, 8), "b": torch.randn(2, 8)}),
        lambda: ((torch.randn(2, 8),), {"b": torch.randn(2, 8)}),
        lambda: ((torch.randn(2, 8),), {"scale": 3.0}),
    ],
    ids=["args", "kwargs", "args+kwargs", "python-number"],
)
def test_trace_takes_any_input_layout(inputs):
    check_scripted(Mix(), inputs)


def test_trace_needs_fixed_python_values():
    scales = iter([2.0, 3.0])
    with pytest.raises(AssertionError, match="non-tensor example inputs differ between calls"):
        check_scripted(Mix(), lambda: ((torch.randn(2, 8),), {"scale": next(scales)}))


def test_no_grad_declarations_are_checked(toy_registry):
    make = get_model_entry("suite_toy").make_example_inputs
    with pytest.raises(AssertionError, match="parameters declared no_grad got a gradient: gate"):
        check_backward(toy_registry(), make, no_grad=("gate",))
    with pytest.raises(AssertionError, match=r"no_grad patterns match no parameter: \['nonexistent\.\*'\]"):
        check_backward(toy_registry(), make, no_grad=("nonexistent.*",))
    check_backward(toy_registry("detached_parameter"), make, no_grad=("gate",))  # declared: passes


def test_reparameterize_needs_a_real_fusion(toy_registry):
    """A model whose reparameterize() does nothing would trivially match: the parameter count must drop."""
    model = toy_registry()
    model.block.reparameterize = lambda: None
    with pytest.raises(AssertionError, match="no fusion"):
        check_reparameterize(model, get_model_entry("suite_toy").make_example_inputs)


def test_compile_catches_graph_breaks(toy_registry):
    make = get_model_entry("suite_toy").make_example_inputs
    from torch._dynamo.exc import Unsupported

    with pytest.raises(Unsupported, match="Data-dependent branching"):
        check_compiled(toy_registry("data_dependent_branch"), make)
