"""Command line of bramley-dataset-reinforcement (also available as `bramley dataset-reinforcement`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "Dataset Reinforcement: reinforce a dataset once, train any model better."

cli = MethodCLI("dataset-reinforcement", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.dataset_reinforcement.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-dataset-reinforcement` and of `bramley dataset-reinforcement`."""
    return cli.main(argv)
