"""Mini reproduction of bramley-dataset-decomposition (`bramley reproduce dataset-decomposition`).

Paper: Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce dataset-decomposition")
    parser.add_argument("--out", default="runs/reproduce-dataset-decomposition")
    parser.parse_args(argv)
    raise NotImplementedError("the dataset-decomposition mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
