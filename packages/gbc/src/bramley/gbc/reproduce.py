"""Mini reproduction of bramley-gbc (`bramley reproduce gbc`).

Paper: Graph-Based Captioning: GBC graphs, GBC-CLIP and structure-induced attention.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce gbc")
    parser.add_argument("--out", default="runs/reproduce-gbc")
    parser.parse_args(argv)
    raise NotImplementedError("the gbc mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
