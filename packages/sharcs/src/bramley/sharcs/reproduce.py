"""Mini reproduction of bramley-sharcs (`bramley reproduce sharcs`).

Paper: SHARCS: routing each sample to a dynamic-width sub-network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce sharcs")
    parser.add_argument("--out", default="runs/reproduce-sharcs")
    parser.parse_args(argv)
    raise NotImplementedError("the sharcs mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
