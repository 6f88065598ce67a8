"""The ``bramley`` umbrella command and :class:`MethodCLI`, which every method package's command line is built from.

Method packages declare an entry point in the group ``bramley.cli`` (name = method, value = ``module:main`` where
``main(argv: list[str] | None) -> int``). ``bramley <method> ...`` forwards to it, ``bramley reproduce <method> ...``
runs ``<method> reproduce ...``, and ``bramley list`` shows what is installed.

A method CLI is a :class:`MethodCLI` with the shared verbs it supports, each with one argument shape in every
package, plus the package's own commands::

    info [MODEL]                                        the package's models: parameters, fused parameters, input
    reparam (--model NAME | --checkpoint PATH) --out DIR  fuse train-time branches, check, save_pretrained
    convert SRC --out DIR [--fuse]                        an official checkpoint -> a save_pretrained folder
    export (--model NAME | --checkpoint PATH) --out FILE [--format onnx]
    train [--recipe NAME|FILE] --out DIR [key=value ...]  a recipe (bramley.core.recipe) run into DIR
    eval --checkpoint PATH [--device D] [--out FILE]      the package's metrics of a trained model
    bench ...                                             the package's benchmark
    reproduce ...                                         the package's mini reproduction

Errors a user causes (:class:`bramley.core.errors.UserError`, a missing or unreadable file) end the command with one
line ``bramley-<method>: error: <what is wrong>`` and exit status 2; ``BRAMLEY_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, UserError
from .threads import torch_threads

__all__ = [
    "ENTRY_POINT_GROUP",
    "MethodCLI",
    "add_threads_argument",
    "check_writable",
    "discover_methods",
    "main",
    "method_main",
    "non_negative_int",
    "positive_int",
    "run_training",
    "torch_threads",
    "unit_float",
    "write_json",
]

ENTRY_POINT_GROUP = "bramley.cli"
ONNX_RTOL = 1e-4  # export: onnxruntime vs PyTorch, relative to the largest output
MethodMain = Callable[[Sequence[str] | None], int | None]
Command = Callable[[argparse.Namespace], int | None]


def discover_methods() -> dict[str, EntryPoint]:
    """Installed method packages: entry-point name -> entry point, sorted by name."""
    return {ep.name: ep for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


# ------------------------------------------------------------------------------------------------ running commands
def method_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    passthrough: Mapping[str, Callable[[list[str]], int | None]] | None = None,
) -> int:
    """Parse ``argv``, run the chosen subcommand's ``func(args)`` and turn user errors into one line and exit 2.

    ``passthrough`` maps subcommands that own their argument parsing (``reproduce``) to ``f(rest_of_argv)``:
    everything after the subcommand is handed over untouched (argparse's REMAINDER drops leading ``--options``).
    ``key=value`` overrides may stand anywhere among a subcommand's options (``train a=1 --out d b=2``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = parser.prog
    try:
        if passthrough and argv and argv[0] in passthrough:
            return int(passthrough[argv[0]](argv[1:]) or 0)
        args = _parse_intermixed(parser, argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except Exception as e:
        message = user_error_message(e)
        if message is None or os.environ.get("BRAMLEY_DEBUG"):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of an error the user caused, or ``None`` for a bug (which keeps its traceback).

    User errors: :class:`UserError` (bad settings, files, data), an ``OSError`` naming a file (missing, unreadable,
    unwritable, a full disk) and a missing optional dependency (whose message names the extra to install).
    """
    if isinstance(error, UserError):
        text = str(error)
    elif isinstance(error, OSError):
        text = f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
    elif isinstance(error, ModuleNotFoundError) or type(error).__name__ == "TrainingDiverged":
        text = str(error)
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message held


def _training_diverged() -> type:
    from .train.trainer import TrainingDiverged  # a run that went non-finite: its message names the step

    return TrainingDiverged


def _parse_intermixed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args`` that also accepts ``key=value`` overrides after options (``--out d lr=0.1``).

    argparse fills a ``nargs="*"`` positional from one run of positional strings only, and
    ``parse_intermixed_args`` refuses parsers with subcommands; so the later runs come back as unrecognized strings
    and are appended to ``args.overrides`` here, in command-line order. Unknown ``--options``, and any extra string
    for a subcommand without overrides, stay argparse's usual error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not isinstance(getattr(args, "overrides", None), list) or any(e.startswith("-") for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    return args


# ----------------------------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


# ---------------------------------------------------------------------------------------------- torch threads
def add_threads_argument(parser: argparse.ArgumentParser, default: int | None = 1) -> argparse.Action:
    """``--threads N``: torch's CPU threads for the command, with one help text everywhere; run the command's work
    under :func:`torch_threads` (``None``: torch's own choice is left as is)."""
    if default is None:
        text = "torch CPU threads (default: torch's choice)"
    elif default == 1:
        text = (
            "torch CPU threads (default 1: small models train fastest on one thread, and a busy machine slows every "
            "multi-threaded op)"
        )
    else:
        text = f"torch CPU threads (default {default})"
    return parser.add_argument("--threads", type=positive_int, default=default, help=text)


# ----------------------------------------------------------------------------------------------- the method CLI
class MethodCLI:
    """A method package's command line: the shared verbs (one argument shape everywhere) and its own commands.

    Example::

        cli = MethodCLI("mobileone", "MobileOne: an improved one millisecond mobile backbone.")
        cli.add_info()
        cli.add_reparam()
        cli.add_train(RECIPES, run_training)
        cli.add_reproduce("bramley.mobileone.reproduce")
        main = cli.main   # the console script and the `bramley.cli` entry point
    """

    def __init__(self, method: str, description: str, epilog: str | None = None) -> None:
        self.method = method
        self.parser = argparse.ArgumentParser(
            prog=f"bramley-{method}",
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self._sub = self.parser.add_subparsers(dest="command", metavar="COMMAND")
        self._passthrough: dict[str, Callable[[list[str]], int | None]] = {}

    @property
    def prog(self) -> str:
        return self.parser.prog

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the command line (see :func:`method_main`)."""
        return method_main(self.parser, argv, self._passthrough)

    def add_command(
        self,
        name: str,
        func: Command,
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        """A package's own subcommand: ``arguments(parser)`` adds its options, ``func(args)`` runs it."""
        parser = self._sub.add_parser(name, help=help, description=help)
        if arguments is not None:
            arguments(parser)
        parser.set_defaults(func=func)
        return parser

    # -------------------------------------------------------------------------------------------------- info
    def add_info(
        self,
        columns: Callable[[str], Mapping[str, Any]] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> argparse.ArgumentParser:
        """``info [MODEL] [--json]``: the package's registered models, their parameters (train-time and fused) and
        native input; ``columns(name)`` adds the package's own columns, ``kwargs`` the factory arguments used."""

        def run(args: argparse.Namespace) -> int:
            from .registry import list_models
            from .report import format_table

            names = list_models(package=self.method)
            if args.model is not None:
                if args.model not in names:
                    raise ConfigError(_unknown(args.model, names, f"{self.method} model"))
                names = [args.model]
            rows = [{**model_info(name, kwargs), **(columns(name) if columns else {})} for name in names]
            print(json.dumps(rows, indent=2) if args.json else format_table(rows, digits=2))
            if note and not args.json:
                print(note)
            return 0

        def arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("model", nargs="?", help="one model (default: all of this package's models)")
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")

        return self.add_command("info", run, "the models: parameters (train-time and fused) and input", arguments)

    # ------------------------------------------------------------------------------------------------ reparam
    def add_reparam(self) -> argparse.ArgumentParser:
        """``reparam (--model NAME | --checkpoint PATH) --out DIR``: fuse, check the fused model equals the original
        on example inputs, and write a ``save_pretrained`` folder that rebuilds the fused model."""

        def run(args: argparse.Namespace) -> int:
            from .checkpoint import save_pretrained
            from .layers.reparam import reparameterize_model

            model = _load(args)
            check_finite_weights(model, args.model or args.checkpoint)
            fused = reparameterize_model(model)
            if not _reparameterizable(model):
                raise ConfigError(f"{model.model_config['name']} has no reparameterizable blocks: nothing to fuse")
            error = output_difference(model, fused, args.image_size)
            save_pretrained(fused, args.out)
            print(f"fused model written to {args.out} (relative max difference to the unfused model: {error:.2e})")
            return 0

        def arguments(p: argparse.ArgumentParser) -> None:
            model_source_arguments(p)
            p.add_argument("--out", type=Path, required=True, help="output save_pretrained folder")
            p.add_argument(
                "--image-size", type=positive_int, default=None, help="input size of the check (default: the model's)"
            )

        return self.add_command("reparam", run, "fuse a model's train-time branches for inference", arguments)

    # ------------------------------------------------------------------------------------------------ convert
    def add_convert(
        self,
        convert: Callable[..., Any],
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        """``convert SRC --out DIR [--model NAME] [--fuse]``: an official checkpoint to a ``save_pretrained`` folder.

        ``convert(state_dict, model_name, **options)`` is the package's in-memory converter returning a
        :class:`bramley.core.convert.Converted`; ``arguments`` may add package options, passed on as keywords.
        Core reads the file safely (:func:`~bramley.core.convert.load_official_file`), builds and checks the model,
        fuses it on request and saves it.
        """
        from .convert import build_converted, load_official_file

        own: list[str] = []

        def run(args: argparse.Namespace) -> int:
            from .checkpoint import save_pretrained
            from .layers.reparam import reparameterize_model

            options = {name: getattr(args, name) for name in own}
            converted = convert(load_official_file(args.source), args.model, **options)
            model = build_converted(converted, f"converted {args.source}")
            if args.fuse:
                if not _reparameterizable(model):
                    raise ConfigError(f"--fuse: {converted.model_name} has no reparameterizable blocks")
                model = reparameterize_model(model)
            save_pretrained(model, args.out)
            kwargs = model.model_config.get("kwargs", {})
            print(f"converted {args.source} -> {args.out}: {converted.model_name} {kwargs} {converted.note()}")
            return 0

        def all_arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("source", type=Path, help="the official checkpoint file")
            p.add_argument("--out", type=Path, required=True, help="output save_pretrained folder")
            p.add_argument("--model", default=None, help="expected model (default: detected from the weights)")
            p.add_argument("--fuse", action="store_true", help="also reparameterize before saving")
            if arguments is not None:
                before = {a.dest for a in p._actions}
                arguments(p)
                own.extend(a.dest for a in p._actions if a.dest not in before)

        return self.add_command("convert", run, help, all_arguments)

    # ------------------------------------------------------------------------------------------------- export
    def add_export(self) -> argparse.ArgumentParser:
        """``export (--model | --checkpoint) --out FILE [--format onnx] [--image-size N] [--no-fuse] [--no-check]``."""

        def run(args: argparse.Namespace) -> int:
            from .export import check_onnx, export_onnx
            from .layers.reparam import reparameterize_model

            check_writable(args.out)
            model = _load(args)
            check_finite_weights(model, args.model or args.checkpoint)
            if not args.no_fuse and _reparameterizable(model):
                model = reparameterize_model(model)
            inputs = example_inputs(model, args.image_size)
            path = export_onnx(model, args.out, inputs, opset=args.opset)
            message = f"exported {model.model_config['name']} to {path}"
            if not args.no_check:
                error = check_onnx(model, path, inputs)
                if not error <= ONNX_RTOL:
                    raise RuntimeError(
                        f"{path}: onnxruntime's outputs differ from PyTorch's by {error:.2e} relative (> {ONNX_RTOL}): "
                        "the export is wrong; please report it"
                    )
                message += f" (onnxruntime relative max difference {error:.2e})"
            print(message)
            return 0

        def arguments(p: argparse.ArgumentParser) -> None:
            model_source_arguments(p)
            p.add_argument("--out", type=Path, required=True, help="output file")
            p.add_argument("--format", choices=["onnx"], default="onnx")
            p.add_argument("--image-size", type=positive_int, default=None, help="image models (default: the model's)")
            p.add_argument("--opset", type=positive_int, default=17)
            p.add_argument("--no-fuse", action="store_true", help="export the train-time (unfused) graph")
            p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

        return self.add_command("export", run, "export to ONNX and check it against PyTorch", arguments)

    # -------------------------------------------------------------------------------------------------- train
    def add_train(
        self,
        schema: Any,
        run: Callable[..., Mapping[str, Any]],
        help: str = "train with a recipe (bundled name or YAML file); torchrun for many GPUs",
        name: str = "train",
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        """``<name> [--recipe NAME|FILE] --out DIR [--device D] [--overwrite] [key=value ...]``.

        The recipe is resolved against ``schema`` (a :class:`bramley.core.recipe.RecipeSchema`; ``--device D`` is
        the override ``train.device=D``) and run by :func:`run_training`: ``run(recipe, out_dir)`` trains and returns
        the results. A package with several training commands (stages of a chain) adds each under its own ``name``
        with its own options (``arguments``); ``run`` then receives them too: ``run(recipe, out_dir, args)``.
        """
        from .recipe import load_recipe
        from .train.distributed import resolve_device

        def command(args: argparse.Namespace) -> int:
            device = [f"train.device={args.device}"] if args.device is not None else []
            recipe = load_recipe(schema, args.recipe, [*args.overrides, *device])
            resolve_device(recipe.train.device)  # a device this machine lacks is an error before any data is read
            runner = run if arguments is None else lambda recipe, out: run(recipe, out, args)
            run_training(recipe, args.out, runner, overwrite=args.overwrite)
            return 0

        def all_arguments(p: argparse.ArgumentParser) -> None:
            if arguments is not None:
                arguments(p)
            default = f" (default: {schema.default_recipe})" if schema.default_recipe else ""
            p.add_argument("--recipe", default=None, help=f"bundled recipe name or a .yaml file{default}")
            p.add_argument("--out", type=Path, required=True, help="run folder: model, metrics, checkpoints")
            p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default: the recipe's)")
            p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
            p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr=0.1 train.epochs=3")

        return self.add_command(name, command, help, all_arguments)

    # --------------------------------------------------------------------------------------------------- eval
    def add_eval(
        self,
        evaluate: Callable[[Any, argparse.Namespace], Mapping[str, Any]],
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        """``eval --checkpoint PATH [--device D] [--out FILE] [package options]``: ``evaluate(model, args)`` returns
        the metrics, printed as JSON (and written to ``--out``)."""

        def run(args: argparse.Namespace) -> int:
            from .checkpoint import load_model
            from .train.distributed import resolve_device

            check_writable(args.out)
            device = resolve_device(args.device)
            model = load_model(args.checkpoint, device=str(device))
            metrics = {"checkpoint": str(args.checkpoint), **evaluate(model, args)}
            write_json(args.out, metrics)
            return 0

        def all_arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("--checkpoint", required=True, help="run folder, save_pretrained folder or .safetensors")
            p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
            p.add_argument("--out", type=Path, default=None, help="also write the metrics to this JSON file")
            if arguments is not None:
                arguments(p)

        return self.add_command("eval", run, help, all_arguments)

    def add_image_eval(
        self, help: str, image_size: int, crop_pct: float, interpolation: str = "bilinear"
    ) -> argparse.ArgumentParser:
        """:meth:`add_eval` for an image classifier on an ImageFolder: ``--data``, ``--image-size``, ``--crop-pct``,
        ``--batch-size`` (defaults: the package's eval preprocessing) and ``--fuse`` (evaluate the reparameterized
        model); metrics from :func:`bramley.core.classification.evaluate_image_folder`."""

        def evaluate(model: Any, args: argparse.Namespace) -> Mapping[str, Any]:
            from .classification import evaluate_image_folder
            from .layers import reparameterize_model

            if args.fuse:
                model = reparameterize_model(model)
            size, crop, batch = args.image_size, args.crop_pct, args.batch_size
            return evaluate_image_folder(model, args.data, size, crop, batch, interpolation)

        def arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("--data", type=Path, required=True, help="ImageFolder root: one sub-folder per class")
            p.add_argument("--image-size", type=positive_int, default=image_size)
            p.add_argument("--crop-pct", type=unit_float, default=crop_pct, help="center-crop fraction")
            p.add_argument("--batch-size", type=positive_int, default=64)
            p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")

        return self.add_eval(evaluate, help, arguments)

    # ---------------------------------------------------------------------------------------------- reproduce
    def add_reproduce(self, module: str) -> None:
        """``reproduce ...``: hand every argument to ``<module>.main(argv)`` (the mini reproduction parses its own)."""

        def run(argv: list[str]) -> int | None:
            return importlib.import_module(module).main(argv)

        self._sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
        self._passthrough["reproduce"] = run


# ------------------------------------------------------------------------------------------------ verb helpers
def check_writable(path: Path | None, option: str = "--out") -> None:
    """Refuse an output file that cannot be written before the work starts rather than after it."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    folder = path.parent
    while not folder.exists():  # atomic_write creates the missing folders: the nearest existing one decides
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path} cannot be written: {folder} is not a writable folder")


def model_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model NAME | --checkpoint PATH`` (exactly one): a registered model with random weights, or trained ones."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", default=None, help="a registered model name (random weights)")
    group.add_argument("--checkpoint", default=None, help="run folder, save_pretrained folder or .safetensors file")


def _load(args: argparse.Namespace):
    from .checkpoint import load_model
    from .registry import list_models

    if args.model is not None and args.model not in list_models():
        raise ConfigError(_unknown(args.model, list_models(), "model"))
    return load_model(args.model or args.checkpoint)


def _unknown(name: str, known: Sequence[str], what: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return f"unknown {what} {name!r}{hint}"


def _reparameterizable(model) -> bool:
    return any(callable(getattr(m, "reparameterize", None)) for m in model.modules())


def check_finite_weights(model, source: Any) -> None:
    """Refuse a model whose weights hold NaN or infinity (a diverged or corrupt run), naming the first tensor."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise DataError(f"{source}: {count} non-finite values in {name} (a diverged or corrupt model)")


def output_difference(model, other, image_size: int | None = None) -> float:
    """Largest difference between two models' outputs on the first model's example inputs (eval mode), relative to
    the largest output; a non-finite output is a :class:`DataError`."""
    import torch

    args, kwargs = example_inputs(model, image_size)
    with torch.no_grad():
        a, b = model.eval()(*args, **kwargs), other.eval()(*args, **kwargs)
    a, b = _first_tensor(a), _first_tensor(b)
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise DataError("the model's outputs on random inputs are not finite")
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


def example_inputs(model, image_size: int | None = None):
    """Example inputs of a model built by ``create_model``: its registry entry's, at ``image_size`` (image models) and
    with the channels it was built for (``in_chans``)."""
    import torch

    from .registry import get_model_entry

    entry = get_model_entry(model.model_config["name"])
    if entry.example_inputs is not None:
        return entry.make_example_inputs()
    (images,), kwargs = entry.make_example_inputs(image_size)
    channels = model.model_config.get("kwargs", {}).get("in_chans")
    if channels is not None and channels != images.shape[1]:
        images = torch.randn(images.shape[0], channels, *images.shape[2:])
    return (images,), kwargs


def _first_tensor(out):
    import torch

    while not isinstance(out, torch.Tensor):
        out = next(iter(out.values())) if isinstance(out, Mapping) else out[0]
    return out.float()


def model_info(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"model", "params_M", "fused_params_M", "input"}`` of a registered model, built on the meta device (no
    memory, no initialisation); ``fused_params_M`` only for models with reparameterizable blocks."""
    import torch

    from .registry import create_model, get_model_entry

    entry = get_model_entry(name)
    with torch.device("meta"):
        model = create_model(name, **(kwargs or {}))
        row: dict[str, Any] = {"model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        if _reparameterizable(model):
            fused = create_model(name, **{**(kwargs or {}), "inference_mode": True})
            row["fused_params_M"] = sum(p.numel() for p in fused.parameters()) / 1e6
    row["input"] = "x".join(map(str, entry.input_size)) if entry.input_size else "custom"
    return row


def run_training(
    recipe, out: Path, run: Callable[[Any, Path], Mapping[str, Any]], overwrite: bool = False
) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out``: one run per folder, seeded, its recipe and results written.

    Holds ``out``'s run lock throughout (a second run on it is refused). A folder holding an earlier run is refused
    unless the recipe resumes it (``train.resume``) or ``overwrite`` replaces it. Then: seed with ``train.seed``
    before anything is built, write ``out/recipe.yaml``, ``run(recipe, out)``, write ``out/results.json`` and
    print the results.
    """
    from .run import RESULTS_NAME, clear_run, run_lock, run_state
    from .train.rng import seed_everything

    out = Path(out)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with run_lock(out) if main_rank else contextlib.nullcontext():
        state = run_state(out)
        if state != "empty" and recipe.train.resume is False and main_rank:
            if not overwrite:
                raise ConfigError(
                    f"{out} already holds a{'n' if state == 'unfinished' else ''} {state} run: resume it "
                    "(train.resume=true), write to another --out, or pass --overwrite to replace it"
                )
            clear_run(out)
        seed_everything(recipe.train.seed)  # before the model and the data are built: a seed reproduces the run
        if main_rank:
            recipe.save(out)
        results = dict(run(recipe, out))
        if main_rank:
            write_json(out / RESULTS_NAME, results, echo=True)
    return results


def write_json(path: Path | None, payload: Mapping[str, Any], echo: bool = True) -> None:
    """Print ``payload`` as JSON and, when ``path`` is given, write it there atomically."""
    from .checkpoint import atomic_write

    text = json.dumps(payload, indent=2, default=str)
    if echo:
        print(text)
    if path is not None:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


# ------------------------------------------------------------------------------------------- the umbrella command
def _load_method(name: str, methods: dict[str, EntryPoint]) -> MethodMain:
    import difflib

    name = name.replace("_", "-")  # `bramley dataset_decomposition` names the same method as the import name
    if name not in methods:
        installed = ", ".join(methods) or "none"
        close = difflib.get_close_matches(name, list(methods), n=1)
        if close:
            sys.exit(f"bramley: unknown method {name!r}; did you mean {close[0]!r}? (installed: {installed})")
        sys.exit(f"bramley: unknown method {name!r} (installed: {installed}). Install it: pip install bramley-{name}")
    return methods[name].load()


def _cmd_list(args: argparse.Namespace, methods: dict[str, EntryPoint]) -> int:
    from importlib.metadata import version

    from .registry import get_model_entry, list_models

    failed = {}
    print("Installed methods:")
    if not methods:
        print("  (none: install a method, e.g. `pip install bramley-mrl`)")
    for name, ep in methods.items():
        dist = ep.dist.name if ep.dist is not None else f"bramley-{name}"
        try:
            ep.load()  # importing the CLI imports the package, which registers its models
            dist_version = version(dist)
        except Exception as e:  # a broken plugin must not hide the others
            failed[name] = e
            dist_version = "?"
        print(f"  {name:<24} {dist} {dist_version}")
    for name, err in failed.items():
        print(f"  warning: method {name!r} failed to load: {err}", file=sys.stderr)
    models = list_models(args.pattern)
    print(f"Models{f' matching {args.pattern!r}' if args.pattern != '*' else ''}: {len(models)}")
    for model in models:
        entry = get_model_entry(model)
        print(f"  {model:<32} {entry.package:<24} {entry.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bramley`` console script."""
    from . import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    methods = discover_methods()
    parser = argparse.ArgumentParser(
        prog="bramley",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the methods line whole (tests and grep read it)
        description="Research methods for efficient vision and representation learning.",
        epilog="Methods installed: " + (", ".join(methods) or "none"),
    )
    parser.add_argument("--version", action="version", version=f"bramley-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{list,reproduce,<method>}")
    p_list = sub.add_parser("list", help="installed methods and registered models")
    p_list.add_argument("pattern", nargs="?", default="*", help="shell-style filter on model names")
    p_rep = sub.add_parser("reproduce", help="run a method's mini reproduction", add_help=False)
    p_rep.add_argument("method", nargs="?")
    for name in methods:
        sub.add_parser(name, help=f"the {name} method's commands", add_help=False)

    if not argv:
        parser.print_help()
        return 0
    head, rest = argv[0], argv[1:]
    if head == "reproduce":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: bramley reproduce <method> [options]\n\nmethods: " + (", ".join(methods) or "none"))
            return 0 if rest else 2
        return int(_load_method(rest[0], methods)(["reproduce", *rest[1:]]) or 0)
    if head in methods:
        return int(_load_method(head, methods)(rest) or 0)
    if not head.startswith("-") and head != "list":
        _load_method(head, methods)  # neither a command nor an installed method: exits naming the installed ones
    args = parser.parse_args(argv)
    if args.command == "list":
        return _cmd_list(args, methods)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
