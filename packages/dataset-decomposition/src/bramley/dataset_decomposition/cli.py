"""Command line of bramley-dataset-decomposition (also available as `bramley dataset-decomposition`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bramley.core.cli import run_method_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-dataset-decomposition",
        description="Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
    return parser


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_method_cli(build_parser(), argv, passthrough={"reproduce": _reproduce})
