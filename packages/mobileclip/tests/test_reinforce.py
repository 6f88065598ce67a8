"""reinforce: stored augmentations replay bit for bit through the shards, teacher outputs are the stored ones, and the
reinforced dataset refuses what does not fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bramley.mobileclip  # noqa: F401
from bramley.core.clip_eval import ClipTokenizer
from bramley.core.data.reinforced import augmentation_seed
from bramley.core.errors import ConfigError, DataError
from bramley.core.registry import create_model
from bramley.mobileclip.data import read_shards, write_shards
from bramley.mobileclip.train import (
    ClipTrainLoss,
    ImageTextData,
    ReinforcedImageText,
    ReinforcedLossSection,
    TemplateCaptioner,
    reinforce,
    synthetic_image_text,
    teacher_embeddings,
)

TINY = dict(
    embed_dim=8,
    image_kwargs={"layers": [1, 1, 1, 1], "embed_dims": [8, 8, 16, 32]},
    text_kwargs={"layers": 1, "width": 8, "heads": 2, "context_length": 12, "vocab_size": 49408},
)


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory):
    torch.manual_seed(0)
    data = ImageTextData(train_size=6, textures=("solid",), counts=(1,), clutter=0)
    split = synthetic_image_text(data, "train")
    teachers = [create_model("mobileclip_s0", **TINY).eval(), create_model("mobileclip_s0", **TINY).eval()]
    tokenizer, augment = ClipTokenizer(context_length=12), data.augment()
    samples = reinforce(
        split.images,
        split.captions,
        teachers,
        TemplateCaptioner(split.attributes),
        tokenizer,
        augment,
        num_augmentations=3,
        num_synthetic=2,
        seed=5,
    )
    paths = write_shards(samples, tmp_path_factory.mktemp("shards") / "%05d.tar", maxcount=4)
    return split, teachers, tokenizer, augment, list(read_shards([str(p) for p in paths], embed_dim=16))


def test_stored_augmentations_replay_bit_for_bit(reinforced):
    split, teachers, tokenizer, augment, samples = reinforced
    assert len(samples) == 6 and all(s.image_emb.shape == (3, 16) and s.text_emb.shape == (3, 16) for s in samples)
    for i, sample in enumerate(samples):
        assert torch.equal(sample.image, split.images[i])  # lossless through the shard
        for a, params in enumerate(sample.param_aug):
            sampled, _ = augment.sample(split.images[i], augmentation_seed(5, i, a))
            assert torch.equal(augment.replay(sample.image, params), sampled)
    # the stored embeddings are the teachers' on the replayed inputs (per-member normalized, concatenated)
    sample = samples[2]
    replayed = torch.stack([augment.replay(sample.image, p) for p in sample.param_aug])
    image_emb, text_emb = teacher_embeddings(teachers, replayed, tokenizer([sample.caption, *sample.syn_text]))
    torch.testing.assert_close(image_emb, sample.image_emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_emb, sample.text_emb, rtol=0, atol=1e-6)


def test_reinforced_batches_train_without_a_teacher(reinforced):
    _, _, tokenizer, augment, samples = reinforced
    dataset = ReinforcedImageText(samples, augment, tokenizer, seed=0)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in dataset[0]}
    student = create_model("mobileclip_s0", **TINY)
    loss, parts = ClipTrainLoss(
        ReinforcedLossSection(mode="reinforced", teacher_dims=[8, 8], teacher_scales=[100, 100])
    )(student, batch)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"clip_loss", "distill_loss"}
    assert student.logit_scale.grad is not None


def test_parameters_that_do_not_fit_the_image_name_the_sample(reinforced):
    _, _, tokenizer, augment, samples = reinforced
    broken = dataclasses.replace(samples[0])  # a copy: the module's samples stay intact for the other tests
    broken.param_aug = [dict(p, crop=[0, 0, 99, 99]) for p in broken.param_aug]
    with pytest.raises(DataError, match=f"sample '{broken.key}', augmentation .*does not fit"):
        ReinforcedImageText([broken], augment, tokenizer, seed=0)[0]


def test_teacher_and_caption_mismatches_are_refused(reinforced):
    split, teachers, tokenizer, augment, _ = reinforced
    with pytest.raises(ConfigError, match="one scale per teacher"):
        ReinforcedLossSection(mode="reinforced", teacher_dims=[8, 8], teacher_scales=[100])
    with pytest.raises(DataError, match="the captioner gave 1 captions for image 0, not 2"):
        reinforce(
            split.images[:1],
            split.captions[:1],
            teachers,
            lambda i, im, c, n: ["one"],
            tokenizer,
            augment,
            num_augmentations=1,
            num_synthetic=2,
        )
    with pytest.raises(DataError, match="1 images but 2 captions"):
        reinforce(
            split.images[:1], split.captions[:2], teachers, TemplateCaptioner(split.attributes), tokenizer, augment
        )


def test_synthetic_image_text_draws_the_configured_classes():
    """The data section's shapes / colors / textures / counts / clutter choose the classes that are drawn (they were
    once ignored, and the reproduction silently drew core's default 64 classes)."""
    data = ImageTextData(train_size=24, test_size=16, shapes=("circle", "square"), colors=("red",), textures=("solid",))
    data.counts, data.clutter = (1,), 0
    for split in ("train", "test"):
        drawn = synthetic_image_text(data, split)
        assert len(drawn.classes) == 2 and len(drawn.images) == (24 if split == "train" else 16)
        assert {a["shape"] for a in drawn.attributes} <= {"circle", "square"}
        assert {(a["color"], a["texture"], a["count"]) for a in drawn.attributes} == {("red", "solid", 1)}


def test_indexed_shards_read_what_streaming_reads(reinforced, tmp_path):
    """Random access over the shards (what training uses: the index in memory, the samples on disk) gives exactly
    the samples the streaming reader gives, in any order, and reinforced training pairs equal the in-memory ones."""
    from bramley.mobileclip.data import IndexedShards

    _, _, tokenizer, augment, streamed = reinforced
    paths = write_shards(streamed, tmp_path / "%05d.tar", maxcount=4)
    indexed = IndexedShards(str(tmp_path / "{00000..00001}.tar"), embed_dim=16, require_image=True)
    assert len(paths) == 2 and len(indexed) == 6 and indexed.keys.nbytes < 200
    for i in (5, 0, 3, -1):
        got, want = indexed[i], streamed[i]
        fields = ((g.key, g.caption, g.param_aug, g.syn_text) for g in (got, want))
        assert next(fields) == next(fields)
        assert torch.equal(got.image, want.image) and torch.equal(got.image_emb, want.image_emb)
        assert torch.equal(got.text_emb, want.text_emb)
    lazy, eager = (ReinforcedImageText(s, augment, tokenizer, seed=1) for s in (indexed, streamed))
    for i in range(6):
        assert all(torch.equal(lazy[i][k], eager[i][k]) for k in eager[i])
    import pickle

    assert pickle.loads(pickle.dumps(indexed))[2].key == streamed[2].key  # spawn-started DataLoader workers
    with pytest.raises(IndexError):
        indexed[6]


def test_indexed_shards_refuse_what_they_cannot_read(tmp_path):
    import gzip

    from bramley.mobileclip.data import IndexedShards

    with pytest.raises(DataError, match="does not exist"):
        IndexedShards(tmp_path / "missing.tar")
    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress(b"\0" * 1024))
    with pytest.raises(DataError, match="uncompressed tar"):
        IndexedShards(tmp_path / "packed.tar.gz")
