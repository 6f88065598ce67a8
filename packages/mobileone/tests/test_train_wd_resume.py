"""The weight-decay annealing restores its initial decays after a resume instead of re-reading annealed ones."""

from types import SimpleNamespace

import torch

from bramley.mobileone.train import WeightDecayCosine


def _trainer(step, wd):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=wd)
    return SimpleNamespace(optimizer=opt, step=step, total_steps=10)


def test_weight_decay_schedule_resumes_from_saved_start():
    straight = WeightDecayCosine(end=1e-5)
    first = _trainer(5, 1e-4)
    straight(first)
    annealed = first.optimizer.param_groups[0]["weight_decay"]
    assert annealed < 1e-4
    # resume: the optimizer comes back with the annealed decay, the callback with its saved state
    resumed = WeightDecayCosine(end=1e-5)
    resumed.load_state_dict(straight.state_dict())
    later = _trainer(8, annealed)
    resumed(later)
    reference = _trainer(8, 1e-4)
    WeightDecayCosine(end=1e-5)(reference)
    assert later.optimizer.param_groups[0]["weight_decay"] == reference.optimizer.param_groups[0]["weight_decay"]
