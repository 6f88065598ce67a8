"""Command line of bramley-gbc (also available as `bramley gbc`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "Graph-Based Captioning: GBC graphs, GBC-CLIP and structure-induced attention."

cli = MethodCLI("gbc", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.gbc.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-gbc` and of `bramley gbc`."""
    return cli.main(argv)
