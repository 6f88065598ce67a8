"""Mini reproduction of bramley-matformer (`bramley reproduce matformer`).

Paper: MatFormer: nested transformers with Mix'n'Match sub-models.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce matformer")
    parser.add_argument("--out", default="runs/reproduce-matformer")
    parser.parse_args(argv)
    raise NotImplementedError("the matformer mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
