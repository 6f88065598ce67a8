"""Mini reproduction of bramley-mobileclip (`bramley reproduce mobileclip`).

Paper: MobileCLIP: fast image-text models through multi-modal reinforced training.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce mobileclip")
    parser.add_argument("--out", default="runs/reproduce-mobileclip")
    parser.parse_args(argv)
    raise NotImplementedError("the mobileclip mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
