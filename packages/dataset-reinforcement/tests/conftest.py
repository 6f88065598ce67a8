import pytest
import torch

from bramley.core.data.reinforced import AugmentConfig
from bramley.dataset_reinforcement.data import RawImages
from bramley.dataset_reinforcement.model import ConvNet
from bramley.dataset_reinforcement.reinforce import TeacherEnsemble, reinforce

NUM_CLASSES = 5
AUGMENT = AugmentConfig(size=12, scale=(0.3, 1.0), erase=0.5, erase_value="random", mean=(0.5,) * 3, std=(0.25,) * 3)


def make_images(n: int = 10, size: tuple[int, int] = (14, 15), seed: int = 0, description: str = "toy") -> RawImages:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)
    targets = torch.arange(n) % NUM_CLASSES
    return RawImages(images, targets, tuple(f"c{i}" for i in range(NUM_CLASSES)), description)


def make_teacher(seed: int = 0) -> TeacherEnsemble:
    torch.manual_seed(seed)
    teachers = [ConvNet(NUM_CLASSES, widths=(4, 8)).eval(), ConvNet(NUM_CLASSES, widths=(6,)).eval()]
    for t in teachers:  # random BatchNorm statistics, so eval outputs are not near-uniform
        for m in t.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return TeacherEnsemble(teachers)


@pytest.fixture
def images() -> RawImages:
    return make_images()


@pytest.fixture
def teacher() -> TeacherEnsemble:
    return make_teacher()


@pytest.fixture
def store(tmp_path, images, teacher):
    out = tmp_path / "store"
    reinforce(images, teacher, out, AUGMENT, num_augmentations=3, topk=2, seed=7, shard_size=4, batch_size=5)
    return out
