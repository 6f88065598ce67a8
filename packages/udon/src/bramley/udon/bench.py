"""Step time of UDON (teacher heads + four-term loss) over one-head joint training, same backbone, same run.

Both models are built on the same backbone and train on the same random single-domain batches with AdamW. Each
round times ``steps`` training steps of each method, in alternating order (UDON first in even rounds); the result
is the median and the spread of the per-round ratios, so machine load drifting during the run hits both methods.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bramley.core.bench import interleaved_rounds, summary

from .losses import cosine_cross_entropy, udon_loss
from .model import JointEmbeddingModel, UdonModel

__all__ = ["run_benchmark"]


def _step_fns(backbone: str, num_classes: list[int], batch: int, size: int, backbone_kwargs: dict[str, Any]):
    torch.manual_seed(0)
    udon = UdonModel(num_classes, backbone, backbone_kwargs=backbone_kwargs)
    joint = JointEmbeddingModel(num_classes, backbone, backbone_kwargs=backbone_kwargs)
    joint.backbone.load_state_dict(udon.backbone.state_dict())
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, min(num_classes), (batch,))
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (udon, joint)}

    def udon_step() -> None:
        loss, _ = udon_loss(udon(images, domain=0), labels)
        opts[udon].zero_grad(set_to_none=True)
        loss.backward()
        opts[udon].step()

    def joint_step() -> None:
        loss = cosine_cross_entropy(joint(images)["logits"], labels)
        opts[joint].zero_grad(set_to_none=True)
        loss.backward()
        opts[joint].step()

    return udon_step, joint_step


def run_benchmark(
    backbone: str = "convnet",
    num_classes: list[int] | None = None,
    batch_size: int = 64,
    image_size: int = 32,
    steps: int = 5,
    rounds: int = 7,
    warmup: int = 2,
    backbone_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time UDON and joint training steps in interleaved rounds; returns per-method medians and the ratio's
    median, quartiles and range (UDON / joint: above 1 is UDON's overhead)."""
    classes = num_classes or [100, 100, 100, 100]
    udon_step, joint_step = _step_fns(backbone, classes, batch_size, image_size, backbone_kwargs or {})
    for _ in range(warmup):
        udon_step()
        joint_step()
    times = interleaved_rounds({"udon": udon_step, "joint": joint_step}, rounds, repeats=steps)
    ratio = summary([u / j for u, j in zip(times["udon"], times["joint"])])
    return {
        "backbone": backbone,
        "num_classes": classes,
        "batch_size": batch_size,
        "image_size": image_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "udon_step_ms": 1000 * statistics.median(times["udon"]),
        "joint_step_ms": 1000 * statistics.median(times["joint"]),
        "ratio_median": ratio["median"],
        "ratio_iqr": [ratio["q1"], ratio["q3"]],
        "ratio_range": [ratio["min"], ratio["max"]],
    }
