"""Command line of bramley-sharcs (also available as `bramley sharcs`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "SHARCS: routing each sample to a dynamic-width sub-network."

cli = MethodCLI("sharcs", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.sharcs.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-sharcs` and of `bramley sharcs`."""
    return cli.main(argv)
