"""Mini reproduction of Matryoshka Representation Learning (`bramley reproduce mrl`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce mrl")
    parser.add_argument("--out", default="runs/reproduce-mrl")
    parser.parse_args(argv)
    raise NotImplementedError("the mrl mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
