"""CPU latency of FastViT variants: unfused vs fused (reparameterized) vs timm's fused model, same weights.

    uv run python packages/fastvit/benchmarks/cpu_latency.py --models fastvit_t8 fastvit_sa12 --image-size 256

Prints a markdown table (ratios are measured in one process, models timed round-robin) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json

import torch

from bramley.core.report import environment, format_table
from bramley.fastvit.bench import bench_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["fastvit_t8", "fastvit_sa12"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_variant(m, args.image_size, 1, iters=args.iters) for m in args.models]
    columns = ["model", "image_size", "threads", "unfused_ms", "fused_ms", "timm_fused_ms"]
    columns += ["speedup_fused_vs_unfused", "timm_fused_over_bramley_fused", "max_abs_diff_vs_timm"]
    print(json.dumps(environment()))
    print(format_table(results, columns, digits=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
