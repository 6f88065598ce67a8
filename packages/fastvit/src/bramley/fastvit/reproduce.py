"""Mini reproduction of FastViT: a fast hybrid vision transformer using structural reparameterization (`bramley reproduce fastvit`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce fastvit")
    parser.add_argument("--out", default="runs/reproduce-fastvit")
    parser.parse_args(argv)
    raise NotImplementedError("the fastvit mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
