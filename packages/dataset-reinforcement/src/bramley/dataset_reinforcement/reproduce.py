"""Mini reproduction of bramley-dataset-reinforcement (`bramley reproduce dataset-reinforcement`).

Paper: Dataset Reinforcement: reinforce a dataset once, train any model better.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce dataset-reinforcement")
    parser.add_argument("--out", default="runs/reproduce-dataset-reinforcement")
    parser.parse_args(argv)
    raise NotImplementedError("the dataset-reinforcement mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
