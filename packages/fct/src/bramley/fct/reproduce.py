"""Mini reproduction of Forward Compatible Training for large-scale embedding retrieval (`bramley reproduce fct`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce fct")
    parser.add_argument("--out", default="runs/reproduce-fct")
    parser.parse_args(argv)
    raise NotImplementedError("the fct mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
