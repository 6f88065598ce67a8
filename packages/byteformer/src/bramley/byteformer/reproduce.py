"""Mini reproduction of bramley-byteformer (`bramley reproduce byteformer`).

Paper: Bytes Are All You Need: Transformers Operating Directly On File Bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce byteformer")
    parser.add_argument("--out", default="runs/reproduce-byteformer")
    parser.parse_args(argv)
    raise NotImplementedError("the byteformer mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
