"""GPU inference throughput (images/s, bf16 autocast, batch 256, 256 px): bramley vs timm, both fused.

    python packages/fastvit/benchmarks/gpu_throughput.py --models fastvit_t8 fastvit_sa12 fastvit_ma36

Both models carry the same weights and are reparameterized; channels_last; CUDA events time ``--iters`` forward
passes after ``--warmup`` ones. Prints a markdown table with the ratio timm / bramley (> 1: bramley is faster).
"""

from __future__ import annotations

import argparse
import json

import torch

from bramley.core.registry import create_model
from bramley.core.report import environment, format_table
from bramley.fastvit import reparameterize
from bramley.fastvit.convert import bramley_to_timm


@torch.inference_mode()
def images_per_second(model: torch.nn.Module, x: torch.Tensor, iters: int, warmup: int) -> float:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            model(x)
        end.record()
        torch.cuda.synchronize()
    return iters * x.shape[0] / (start.elapsed_time(end) / 1e3)


def main() -> None:
    import timm
    from timm.utils.model import reparameterize_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["fastvit_t8", "fastvit_sa12", "fastvit_sa36", "fastvit_ma36"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA device")
    rows = []
    for name in args.models:
        model = create_model(name).eval()
        ref = timm.create_model(name).eval()
        ref.load_state_dict(bramley_to_timm(model.state_dict()))
        ours = reparameterize(model).cuda().to(memory_format=torch.channels_last)
        theirs = reparameterize_model(ref).cuda().to(memory_format=torch.channels_last)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device="cuda")
        x = x.to(memory_format=torch.channels_last)
        ips = {k: images_per_second(m, x, args.iters, args.warmup) for k, m in (("bramley", ours), ("timm", theirs))}
        rows.append(
            {
                "model": name,
                "bramley_img_s": ips["bramley"],
                "timm_img_s": ips["timm"],
                "bramley_over_timm": ips["bramley"] / ips["timm"],
            }
        )
    print(json.dumps(environment()))
    print(format_table(rows, digits=1))


if __name__ == "__main__":
    main()
