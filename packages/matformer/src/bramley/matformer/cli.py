"""Command line of bramley-matformer (also available as `bramley matformer`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "MatFormer: nested transformers with Mix'n'Match sub-models."

cli = MethodCLI("matformer", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.matformer.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-matformer` and of `bramley matformer`."""
    return cli.main(argv)
