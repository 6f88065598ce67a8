"""The ``bramley`` umbrella command and the helpers every method CLI is built from.

Method packages declare an entry point in the group ``bramley.cli`` (name = method, value = ``module:main`` where
``main(argv: list[str] | None) -> int | None``). ``bramley <method> ...`` forwards to it, ``bramley reproduce
<method> ...`` runs ``<method> reproduce ...``, and ``bramley list`` shows what is installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .config import ConfigError, resolve_config, save_config

__all__ = ["add_config_arguments", "config_from_args", "discover_methods", "main", "run_method_cli"]

ENTRY_POINT_GROUP = "bramley.cli"
MethodMain = Callable[[Sequence[str] | None], int | None]


def discover_methods() -> dict[str, EntryPoint]:
    """Installed method packages: entry-point name -> entry point, sorted by name."""
    return {ep.name: ep for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


def add_config_arguments(parser: argparse.ArgumentParser, default_out: str | None = None) -> None:
    """Add ``--config file.yaml``, ``--out DIR`` and ``key=value`` overrides to a subcommand parser.

    With :func:`run_method_cli` the overrides may stand anywhere among the options (``train lr=0.1 --out d
    epochs=3``); they apply in command-line order, later ones winning.
    """
    parser.add_argument("--config", type=Path, default=None, help="YAML file with settings (merged over defaults)")
    parser.add_argument("--out", type=Path, default=default_out, help="output directory (resolved config saved here)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override settings, e.g. train.lr=0.1")


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any], save: bool = True, open_sections: Sequence[str] = ()
) -> dict[str, Any]:
    """Resolve defaults <- ``--config`` <- overrides; save the result as ``<out>/config.yaml``.

    ``open_sections`` (e.g. ``("model.kwargs",)``) accept any key: see :func:`bramley.core.config.apply_overrides`.
    """
    config = resolve_config(defaults, args.config, args.overrides, open_sections)
    if save and getattr(args, "out", None) is not None:
        save_config(config, args.out)
    return config


def run_method_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    passthrough: Mapping[str, Callable[[list[str]], int | None]] | None = None,
) -> int:
    """Parse ``argv`` and call the chosen subcommand's ``func(args)``; config errors become clean exits.

    ``passthrough`` maps subcommands that own their argument parsing (e.g. ``reproduce``) to ``f(rest_of_argv)``:
    everything after the subcommand is handed over untouched (argparse's REMAINDER drops leading ``--options``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if passthrough and argv and argv[0] in passthrough:
        return int(passthrough[argv[0]](argv[1:]) or 0)
    args = _parse_intermixed(parser, argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def _parse_intermixed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args`` that also accepts ``key=value`` overrides after options (``--out d lr=0.1``).

    argparse fills a ``nargs="*"`` positional from one run of positional strings only, and
    ``parse_intermixed_args`` refuses parsers with subcommands; so the later runs come back as unrecognized strings
    and are appended to ``args.overrides`` here, which keeps command-line order (malformed ones then fail in
    :func:`~bramley.core.config.resolve_config` with a message naming them, wherever they stand). Unknown
    ``--options``, and any extra string for a subcommand without overrides, are still argparse's usual error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not isinstance(getattr(args, "overrides", None), list) or any(e.startswith("-") for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    return args


def _load_method(name: str, methods: dict[str, EntryPoint]) -> MethodMain:
    name = name.replace("_", "-")  # `bramley dataset_decomposition` names the same method as the import name
    if name not in methods:
        installed = ", ".join(methods) or "none"
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
