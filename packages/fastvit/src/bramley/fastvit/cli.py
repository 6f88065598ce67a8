"""Command line of bramley-fastvit (also available as `bramley fastvit`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bramley.core.cli import run_method_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-fastvit",
        description="FastViT: a fast hybrid vision transformer using structural reparameterization.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("reproduce", help="run the mini reproduction", add_help=False)
    p.set_defaults(func=lambda args: _reproduce(args.rest))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_method_cli(build_parser(), argv)
