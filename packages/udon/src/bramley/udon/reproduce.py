"""Mini reproduction of bramley-udon (`bramley reproduce udon`).

Paper: UDON: universal image embeddings by dynamic online distillation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce udon")
    parser.add_argument("--out", default="runs/reproduce-udon")
    parser.parse_args(argv)
    raise NotImplementedError("the udon mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
