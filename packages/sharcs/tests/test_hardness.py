import math

import pytest
import torch

from bramley.core.errors import ConfigError
from bramley.sharcs.hardness import HardnessTracker, assign_widths, check_thresholds, hardness_of

WIDTHS = (0.25, 0.5, 1.0)
PAPER = {0.25: [0.7, 1.0], 0.5: [0.4, 0.9], 1.0: [0.0, 0.5]}


def test_paper_thresholds_pass_and_keys_become_floats():
    assert check_thresholds({"0.25": [0.7, 1], "0.5": [0.4, 0.9], "1.0": [0, 0.5]}, WIDTHS) == {
        0.25: (0.7, 1.0),
        0.5: (0.4, 0.9),
        1.0: (0.0, 0.5),
    }


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ({0.25: [0.7, 1.0], 1.0: [0.0, 0.5]}, "no range for width 0.5"),
        ({**PAPER, 0.75: [0.1, 0.2]}, "a range for width 0.75, not a model width"),
        ({**PAPER, 0.5: [0.9, 0.4]}, "needs low < high"),
        ({**PAPER, 0.25: [0.7, 1.2]}, "leaves the probability scale"),
        ({**PAPER, 0.5: [0.7, 1.0]}, "share the range"),
        ({0.25: [0.0, 0.5], 0.5: [0.4, 0.9], 1.0: [0.7, 1.0]}, "narrower width must take easier samples"),
        ({**PAPER, 0.5: [0.4]}, "must be a [low, high] pair"),
        ({**PAPER, "wide": [0.1, 0.2]}, "is not a width"),
    ],
)
def test_bad_thresholds_are_named(thresholds, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_thresholds(thresholds, WIDTHS)


def test_entropy_ranges_run_the_other_way():
    check_thresholds({0.25: [0.0, 0.3], 1.0: [0.3, math.inf]}, (0.25, 1.0), "entropy")
    with pytest.raises(ConfigError, match="lower entropy"):
        check_thresholds({0.25: [0.3, 5.0], 1.0: [0.0, 0.3]}, (0.25, 1.0), "entropy")


def test_assign_widths_buckets_by_every_value_of_the_window():
    ranges = check_thresholds(PAPER, WIDTHS)
    history = torch.tensor(
        [
            # easy  overlap  hard  mixed  prob1  unseen  nowhere-by-window
            [0.95, 0.8, 0.1, 0.95, 1.0, math.nan, 0.45],
            [0.99, 0.85, 0.2, 0.3, 1.0, math.nan, 0.95],
        ]
    )
    labels, index = assign_widths(history, ranges, WIDTHS, generator=torch.Generator().manual_seed(0))
    assert labels.tolist() == [
        [1, 0, 0],  # all values in [0.7, 1]
        [1, 1, 0],  # in the 0.25 and the 0.5 ranges: both labels
        [0, 0, 1],
        [0, 0, 1],  # 0.3 and 0.95: not in any one range for the whole window -> full width
        [1, 0, 0],  # probability exactly 1 is easy (the top of the scale is included)
        [0, 0, 1],  # never recorded: full width
        [0, 0, 1],  # 0.45 and 0.95 fit no single range -> full width
    ]
    assert index.tolist()[0] == 0 and index.tolist()[2:] == [2, 2, 0, 2, 2]
    assert index[1] in (0, 1)


def test_a_sample_in_two_buckets_trains_at_either():
    ranges = check_thresholds(PAPER, WIDTHS)
    history = torch.full((1, 2000), 0.8)
    _, index = assign_widths(history, ranges, WIDTHS, generator=torch.Generator().manual_seed(0))
    share = (index == 0).float().mean()
    assert set(index.tolist()) == {0, 1} and 0.4 < share < 0.6


def test_hardness_values():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    labels = torch.tensor([0, 1])
    assert torch.allclose(hardness_of(logits, labels), torch.tensor([0.5, torch.sigmoid(torch.tensor(-20.0))]))
    assert torch.allclose(hardness_of(logits, labels, "entropy")[0], torch.tensor(math.log(2)))


def test_tracker_warms_up_then_buckets_and_resumes():
    tracker = HardnessTracker(4, WIDTHS, PAPER, window=2, warmup_epochs=2, seed=3)
    idx = torch.arange(4)
    for epoch in range(2):
        assert tracker.targets(idx)[1].tolist() == [2, 2, 2, 2], "warm-up trains at full width"
        tracker.record(idx, torch.tensor([0.99, 0.1, 0.6, 0.95 if epoch else 0.2]))
        tracker.end_epoch()
    labels, index = tracker.targets(idx)
    assert index[:2].tolist() == [0, 2] and labels[2].tolist() == [0, 1, 0] and index[3] == 2
    state = tracker.state_dict()
    again = HardnessTracker(4, WIDTHS, PAPER, window=2, warmup_epochs=2, seed=3)
    again.load_state_dict(state)
    assert torch.equal(again.targets(idx)[0], labels) and again.epoch == 2
    with pytest.raises(ConfigError, match="hardness history has shape"):
        HardnessTracker(5, WIDTHS, PAPER, window=2, warmup_epochs=2).load_state_dict(state)


def test_tracker_arguments():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        HardnessTracker(4, WIDTHS, PAPER, window=3, warmup_epochs=1)
    with pytest.raises(IndexError, match="out of range"):
        HardnessTracker(4, WIDTHS, PAPER).targets(torch.tensor([4]))
