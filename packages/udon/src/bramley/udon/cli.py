"""Command line of bramley-udon (also available as `bramley udon`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "UDON: universal image embeddings by dynamic online distillation."

cli = MethodCLI("udon", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.udon.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-udon` and of `bramley udon`."""
    return cli.main(argv)
