"""The mini reproduction's default recipe trains its models enough to compare them."""

from __future__ import annotations

import torch

from bramley.udon.data import mini_domain
from bramley.udon.reproduce import DATA_SEED, _recipe, _train, parse_args


def test_default_recipe_fits_the_clean_domain():
    # `shapes` (16 clean, balanced classes) is the easiest domain to fit: a specialist trained with the defaults
    # (its share of the steps) must classify its own training set; 6 epochs of batch 64 left it at ~50 %
    torch.set_num_threads(1)
    args = parse_args([])
    torch.manual_seed(0)
    model = _train(_recipe("specialists", args, 0, args.epochs, ["shapes"]), ["shapes"], args.image_size)
    train = mini_domain("shapes", "train", args.image_size, DATA_SEED)
    with torch.no_grad():
        accuracy = (model(train.images)["logits"].argmax(-1) == train.targets).float().mean().item()
    assert accuracy >= 0.8, f"training accuracy {accuracy:.2f}: the default recipe under-trains"
