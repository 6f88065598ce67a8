"""Losses, cost accounting and core-trainer wiring: DD buckets, concat-and-chunk with/without document masking."""

import contextlib
import json

import numpy as np
import pytest
import torch

from bramley.core.train import TrainConfig, Trainer
from bramley.dataset_decomposition.baseline import ConcatChunkDataset, causal_attention_pairs
from bramley.dataset_decomposition.buckets import Buckets
from bramley.dataset_decomposition.cli import main
from bramley.dataset_decomposition.make_buckets import write_buckets
from bramley.dataset_decomposition.model import DDGPT
from bramley.dataset_decomposition.sampling import BucketBatchSampler
from bramley.dataset_decomposition.train import (
    TrainingMeter,
    attention_flops,
    batch_sequence_lengths,
    evaluate_lm,
    lm_loss_fn,
    loss_by_position,
    split_batch,
)

RECIPES = ["openlm_410m_dd", "openlm_410m_baseline", "openlm_1b_dd", "openlm_1b_baseline"]
TINY = [
    "model.name=dd_gpt_tiny", "model.kwargs.vocab_size=257", "model.kwargs.dim=16", "model.kwargs.depth=1",
    "model.kwargs.num_heads=2", "model.kwargs.max_seq_len=32", "data.tokens_per_step=64", "data.seq_len=32",
    "data.num_cycles=1", "train.steps=2", "train.amp=none", "train.grad_accum_steps=1", "optim.warmup_steps=1",
    "train.checkpoint_every=0",
]  # fmt: skip


def tiny_model(**kw) -> DDGPT:
    torch.manual_seed(0)
    return DDGPT(**{"dim": 16, "depth": 1, "num_heads": 2, "max_seq_len": 64, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few real text documents (stdlib-like Python) as files, and their bucket folder (lengths 4..32)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "import", "class", "value", "None", "for", "in", "if", "else", "(", ")", ":"]
    (root / "txt").mkdir()
    docs = []
    for i in range(40):
        doc = " ".join(rng.choice(words, size=int(rng.integers(3, 80))))
        (root / "txt" / f"doc{i:02d}.txt").write_text(doc)
        docs.append(doc)
    buckets = write_buckets(docs, root / "buckets", min_log2=2, max_log2=5, seed=0)
    return root, docs, buckets


# ------------------------------------------------------------------------------------------------------ accounting
def test_attention_flops_counts_visible_pairs():
    lengths = [1, 5, 32]
    pairs = causal_attention_pairs(lengths)  # the data engineer's pair count, sum l (l + 1) / 2
    assert attention_flops(lengths, dim=8, depth=3) == 3 * 3 * 4 * 8 * pairs  # fwd+bwd x depth x 4 d per pair
    assert attention_flops(lengths, dim=8, depth=3, training=False) == 3 * 4 * 8 * pairs
    # one row of 64 costs more than the same 64 tokens as 8 rows of 8: the point of DD
    assert attention_flops([64], 8, 1) > 7 * attention_flops([8] * 8, 8, 1)


def test_split_batch_dense_and_document_masked():
    tokens = torch.arange(2 * 9).view(2, 9)
    inputs, targets, cu, max_len = split_batch(tokens)
    assert inputs.shape == targets.shape == (2, 8) and cu is None and max_len is None
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]])
    _, _, cu, max_len = split_batch({"tokens": tokens, "segments": segments})
    assert cu.tolist() == [0, 3, 8, 16] and max_len == 8
    assert batch_sequence_lengths({"tokens": tokens, "segments": segments}).tolist() == [3, 5, 8]
    with pytest.raises(ValueError, match="segments"):
        split_batch({"tokens": tokens, "segments": segments[:, :5]})
    with pytest.raises(TypeError, match="tokens"):
        split_batch({"segments": segments})
    with pytest.raises(ValueError, match="L \\+ 1"):
        split_batch(torch.zeros(3, dtype=torch.long))


def test_document_masked_loss_equals_documents_alone():
    model = tiny_model().double()
    tokens = torch.randint(0, 257, (1, 13))
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]])
    loss, _ = lm_loss_fn()(model, {"tokens": tokens, "segments": segments})
    # the same 12 predictions, each document run alone (targets may cross into the next document, as in the baseline)
    first = model(tokens[:, :5]).log_softmax(-1)[0].gather(-1, tokens[0, 1:6, None])
    second = model(tokens[:, 5:12]).log_softmax(-1)[0].gather(-1, tokens[0, 6:13, None])
    torch.testing.assert_close(loss, -torch.cat([first, second]).mean(), rtol=1e-12, atol=1e-12)
    # one document per row: masked == dense
    whole = torch.zeros(1, 12, dtype=torch.long)
    torch.testing.assert_close(
        lm_loss_fn()(model, {"tokens": tokens, "segments": whole})[0], lm_loss_fn()(model, tokens)[0]
    )


def test_z_loss_and_eval_helpers():
    model = tiny_model()
    batch = torch.randint(0, 257, (2, 9))
    plain, extras = lm_loss_fn()(model, batch)
    plain = plain.detach()
    with_z, _ = lm_loss_fn(z_loss=1e-2)(model, batch)
    assert with_z > plain and extras == {"seq_len": 8.0}
    result = evaluate_lm(model, [batch[:1], batch[1:]])
    assert result["tokens"] == 16 and result["loss"] == pytest.approx(float(plain), rel=1e-5)
    per_pos = loss_by_position(model, batch)
    assert per_pos.shape == (8,) and float(per_pos.mean()) == pytest.approx(float(plain), rel=1e-5)
    with pytest.raises(ValueError, match="z_loss"):
        lm_loss_fn(z_loss=-1)


# ------------------------------------------------------------------------------------------------- trainer wiring
def _fit(model, data, sampler, batch_size, steps, meter, seed=0):
    cfg = TrainConfig(steps=steps, batch_size=batch_size, optimizer="adamw", lr=3e-3, warmup_steps=1, seed=seed,
                      device="cpu", log_every=1000)  # fmt: skip
    trainer = Trainer(model, cfg, train_data=data, loss_fn=lm_loss_fn(meter=meter), batch_sampler=sampler,
                      callbacks=[meter])  # fmt: skip
    return trainer, trainer.fit()


def test_dd_and_baselines_train_at_equal_tokens(corpus):
    _, docs, buckets = corpus
    steps, tokens_per_step = 6, 64
    totals = {}
    for method in ("dd", "cc", "cc_dm"):
        model = tiny_model(max_seq_len=32)
        meter = TrainingMeter.for_model(model)
        if method == "dd":
            sampler = BucketBatchSampler.from_buckets(buckets, tokens_per_step, curriculum="grow_p2", num_cycles=2)
            trainer, metrics = _fit(model, buckets.dataset(), sampler, 1, steps, meter)
        else:
            data = ConcatChunkDataset.from_documents(docs, 32, return_segments=method == "cc_dm")
            trainer, metrics = _fit(model, data, None, tokens_per_step // 32, steps, meter)
        assert np.isfinite(metrics["train_loss"]) and trainer.step == steps
        totals[method] = meter.totals()
        assert sum(meter.seq_len_tokens.values()) == steps * tokens_per_step
    assert totals["dd"]["tokens"] == totals["cc"]["tokens"] == totals["cc_dm"]["tokens"] == steps * tokens_per_step
    # the same rows cost less attention with document masking, and DD (mostly short rows) less than both
    assert totals["dd"]["attention_flops"] < totals["cc_dm"]["attention_flops"] < totals["cc"]["attention_flops"]
    assert totals["cc"]["attention_flops"] == attention_flops([32] * (steps * 2), 16, 1)


def test_meter_state_round_trip():
    meter = TrainingMeter(dim=4, depth=2, flops_per_token=10, world_size=2)
    meter.add_batch(torch.tensor([3, 3, 5]))
    meter()
    copy = TrainingMeter(dim=4, depth=2, flops_per_token=10, world_size=2)
    copy.load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert copy.totals() == meter.totals()
    assert meter.totals()["tokens"] == 22 and meter.seq_len_tokens == {3: 6, 5: 5}
    assert meter.totals()["model_flops"] == 22 * 10 + meter.totals()["attention_flops"]


# ------------------------------------------------------------------------------------------------------- recipes
def test_bundled_recipes_load():
    """Every bundled recipe resolves against the schema; the paper recipes keep the official run's settings."""
    from importlib.resources import files

    from bramley.core.recipe import load_recipe
    from bramley.dataset_decomposition.recipe import RECIPES as SCHEMA

    bundled = sorted(p.name[:-5] for p in files("bramley.dataset_decomposition").joinpath("recipes").iterdir())
    assert bundled == sorted([*RECIPES, "smoke"])
    for name in RECIPES:
        recipe = load_recipe(SCHEMA, name)
        assert recipe.model.name == ("dd_gpt_1b" if "1b" in name else "dd_gpt_410m")
        assert recipe.model.kwargs == {"vocab_size": 50432, "rope_base": 100000.0, "norm": "layernorm", "qk_norm": True}
        assert (recipe.optim.optimizer, recipe.optim.lr, recipe.optim.betas) == ("adamw", 3e-3, (0.9, 0.95))
        assert (recipe.optim.warmup_steps, recipe.optim.min_lr_ratio, recipe.optim.clip_grad_norm) == (5000, 0.01, 1.0)
        assert recipe.optim.weight_decay == 0.033 and recipe.loss.z_loss == 1e-4
        assert (recipe.train.amp, recipe.train.grad_accum_steps, recipe.train.distributed) == ("bf16", 4, "fsdp")
        assert recipe.data.method == ("dd" if name.endswith("_dd") else "concat_chunk")
        assert recipe.data.tokens_per_step == 16384 and recipe.train.steps == (54923 if "1b" in name else 15640)


def test_smoke_recipe_runs_alone(tmp_path):
    """`train --recipe smoke --out DIR` needs no data: it decomposes stdlib sources and trains one whole pass."""
    import warnings

    from bramley.core.checkpoint import load_model

    out = tmp_path / "smoke"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one whole pass: no cycle coverage warning
        assert main(["train", "--recipe", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    steps = results["metrics"]["step"]
    assert results["method"] == "dd" and np.isfinite(results["metrics"]["train_loss"]) and 4 <= steps <= 100
    assert results["cost"]["tokens"] == steps * 2048
    assert set(results["tokens_by_sequence_length"]) == {"16", "32", "64", "128"}
    buckets = Buckets(out / "buckets")
    assert buckets.lengths == [16, 32, 64, 128] and buckets.manifest["stats"]["documents"] == 10
    assert load_model(out / "model.safetensors").max_seq_len == 128


@pytest.mark.filterwarnings("ignore:train.steps=.* passes over the buckets")  # 2 tiny steps
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke_at_tiny_scale(recipe, corpus, tmp_path):
    root, _, _ = corpus
    data = [f"data.buckets={root / 'buckets'}"] if recipe.endswith("_dd") else [f"data.documents={root / 'txt'}"]
    if recipe.endswith("baseline"):
        data.append("data.document_masking=true")
    out = tmp_path / recipe
    argv = ["train", "--recipe", recipe, "--out", str(out), *TINY, *data, f"data.val_buckets={root / 'buckets'}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["cost"]["tokens"] == 2 * 64 and results["metrics"]["step"] == 2
    assert np.isfinite(results["val"]["loss"]) and (out / "model.safetensors").is_file()
    config = (out / "recipe.yaml").read_text()
    assert "distributed: fsdp" in config and "z_loss: 0.0001" in config  # the recipe's settings were kept


def test_train_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "--recipe", "openlm_1b_dd", "--out", str(tmp_path), *TINY]) == 2
    assert "data.buckets" in capsys.readouterr().err
    assert main(["train", "--recipe", "nope", "--out", str(tmp_path)]) == 2
    assert "openlm_1b_dd" in capsys.readouterr().err


def test_meter_resumes_with_the_trainer(corpus, tmp_path):
    """Killed after step 3 and resumed: the meter's counts continue from the checkpoint, as if never stopped."""
    _, _, buckets = corpus

    class Crash(RuntimeError):
        pass

    def run(out, crash_at=None, resume=False):
        model = tiny_model(max_seq_len=32)
        meter = TrainingMeter.for_model(model)
        sampler = BucketBatchSampler.from_buckets(buckets, 64, curriculum="grow_p2", num_cycles=1)

        def crash(trainer):
            if trainer.step == crash_at:
                raise Crash

        cfg = TrainConfig(steps=5, batch_size=1, optimizer="adamw", lr=3e-3, warmup_steps=1, device="cpu",
                          out_dir=str(out), checkpoint_every=3, resume=resume, log_every=1000)  # fmt: skip
        trainer = Trainer(model, cfg, train_data=buckets.dataset(), loss_fn=lm_loss_fn(meter=meter),
                          batch_sampler=sampler, callbacks=[meter, crash])  # fmt: skip
        with contextlib.suppress(Crash):
            trainer.fit()
        return meter, trainer

    straight, _ = run(tmp_path / "a")
    run(tmp_path / "b", crash_at=4)
    resumed, trainer = run(tmp_path / "b", resume=True)
    assert trainer.step == 5 and resumed.steps == straight.steps == 5
    for key in ("tokens", "attention_flops", "model_flops"):
        assert resumed.totals()[key] == straight.totals()[key]
    assert resumed.seq_len_tokens == straight.seq_len_tokens
