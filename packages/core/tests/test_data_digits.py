import numpy as np
import pytest
import torch

from bramley.core.data import DigitsDataset, digits_splits, digits_tensors, stratified_split


def test_stratified_split_is_deterministic_disjoint_and_complete():
    labels = np.repeat(np.arange(5), [10, 20, 30, 7, 1])
    a = stratified_split(labels, val_fraction=0.2, test_fraction=0.3, seed=3)
    b = stratified_split(labels, val_fraction=0.2, test_fraction=0.3, seed=3)
    c = stratified_split(labels, val_fraction=0.2, test_fraction=0.3, seed=4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[n], c[n]) for n in a)
    allidx = np.concatenate(list(a.values()))
    assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)
    # per-class counts follow round(fraction * count)
    for cls, count in zip(range(5), [10, 20, 30, 7, 1]):
        assert (labels[a["test"]] == cls).sum() == round(0.3 * count)
        assert (labels[a["val"]] == cls).sum() == round(0.2 * count)


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions_raise(val, test):
    with pytest.raises(ValueError, match="fraction"):
        stratified_split([0, 1, 2], val_fraction=val, test_fraction=test)


def test_digits_splits_sizes_disjoint_and_stratified():
    splits = digits_splits(seed=0)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1259, "val": 179, "test": 359}
    # stratified: every class share within 1 sample of the split fraction
    for name, frac in (("val", 0.1), ("test", 0.2)):
        counts = np.bincount(splits[name].targets.numpy(), minlength=10)
        full = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
        assert np.all(np.abs(counts - frac * full) <= 0.5 + 1e-9)
    # disjoint: no identical image appears in two splits (the raw digits set has no exact duplicates across them)
    raw = {k: {v._images[i].numpy().tobytes() for i in range(len(v))} for k, v in splits.items()}
    assert not (raw["train"] & raw["val"]) and not (raw["train"] & raw["test"]) and not (raw["val"] & raw["test"])


def test_digits_deterministic_by_seed():
    x0, y0 = digits_tensors("val", seed=1)
    x1, y1 = digits_tensors("val", seed=1)
    x2, y2 = digits_tensors("val", seed=2)
    torch.testing.assert_close(x0, x1)
    assert torch.equal(y0, y1)
    assert not torch.equal(y0, y2) or not torch.equal(x0, x2)


def test_digits_shapes_dtypes_and_normalization():
    ds = DigitsDataset("train")
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int) and 0 <= y < 10
    X, Y = ds.tensors()
    assert X.shape == (1259, 1, 8, 8) and Y.dtype == torch.int64
    assert abs(X.mean().item()) < 1e-4 and abs(X.std().item() - 1) < 1e-3  # train statistics
    raw, _ = digits_tensors("train", normalize=False)
    assert raw.min() >= 0 and raw.max() <= 1 and raw.max() == 1


def test_digits_upsample_and_channels_match_tensors_accessor():
    ds = DigitsDataset("test", image_size=32, in_chans=3)
    X, Y = ds.tensors()
    assert X.shape == (359, 3, 32, 32) and X.is_contiguous()
    x, y = ds[5]
    torch.testing.assert_close(x, X[5])
    assert y == int(Y[5])
    assert torch.equal(X[:, 0], X[:, 2])
    # bilinear upsampling keeps the image mean roughly (exactly for integer factor with edge handling aside)
    small, _ = digits_tensors("test")
    assert abs(X[:, :1].mean().item() - small.mean().item()) < 0.05


def test_digits_transform_and_cache_isolation():
    ds = DigitsDataset("val", transform=lambda t: t * 0)
    assert ds[0][0].abs().sum() == 0
    X, Y = digits_tensors("val")
    X.zero_()
    Y.zero_()
    X2, Y2 = digits_tensors("val")
    assert X2.abs().sum() > 0 and Y2.sum() > 0


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("training")
    with pytest.raises(ValueError, match="in_chans"):
        DigitsDataset(in_chans=2)
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset(image_size=0)


def test_linear_classifier_learns_digits():
    """Sanity: least-squares linear classifier (closed form, no optimiser) fits train and generalises to test."""
    X, y = digits_tensors("train")
    Xt, yt = digits_tensors("test")
    design = torch.cat([X.flatten(1), torch.ones(len(X), 1)], 1).double()
    weights = torch.linalg.lstsq(design, torch.nn.functional.one_hot(y, 10).double()).solution
    predict = lambda x: (torch.cat([x.flatten(1), torch.ones(len(x), 1)], 1).double() @ weights).argmax(1)  # noqa: E731
    assert (predict(Xt) == yt).float().mean() > 0.9
    shuffled = yt[torch.randperm(len(yt))]
    assert (predict(Xt) == shuffled).float().mean() < 0.3  # the labels matter
