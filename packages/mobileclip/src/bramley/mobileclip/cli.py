"""Command line of bramley-mobileclip (also available as `bramley mobileclip`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "MobileCLIP: fast image-text models through multi-modal reinforced training."

cli = MethodCLI("mobileclip", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.mobileclip.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-mobileclip` and of `bramley mobileclip`."""
    return cli.main(argv)
