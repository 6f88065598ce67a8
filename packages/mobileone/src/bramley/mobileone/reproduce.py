"""Mini reproduction of MobileOne: an improved one millisecond mobile backbone (`bramley reproduce mobileone`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce mobileone")
    parser.add_argument("--out", default="runs/reproduce-mobileone")
    parser.parse_args(argv)
    raise NotImplementedError("the mobileone mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
