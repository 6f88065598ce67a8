"""SHARCS on Hugging Face BERT / RoBERTa: width 1 is the transformers model, padding never reaches the router, and the
GLUE recipe trains on local TSV files with a local tokenizer."""

import json

import pytest
import torch

from bramley.core.errors import DataError
from bramley.sharcs.glue import GlueDataset, read_glue_tsv
from bramley.sharcs.hf import SharcsHF

CONFIG = dict(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
WORDS = ("a", "an", "the", "movie", "film", "good", "bad", "great", "awful", "fine", "dull", "fun", "plot", "actor")


def _inputs():
    torch.manual_seed(0)
    ids = torch.randint(3, 60, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_width_one_is_the_transformers_model(model_type):
    torch.manual_seed(0)
    model = SharcsHF(model_type, CONFIG, num_classes=3, router_layer=1, router_hidden=8).eval()
    x = _inputs()
    torch.testing.assert_close(model(x, width=1.0), model.hf(**x).logits, rtol=1e-5, atol=1e-5)


def test_padding_changes_neither_the_route_nor_the_logits():
    torch.manual_seed(0)
    model = SharcsHF("bert", CONFIG, num_classes=3, router_layer=1, router_hidden=8).train()
    x = _inputs()
    padded = {k: torch.nn.functional.pad(v, (0, 5), value=0) for k, v in x.items()}
    index = torch.tensor([0, 1, 2, 0])
    for a, b in zip(model(x, index=index), model(padded, index=index)):  # train mode: the router sees the mask too
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model.eval()
    torch.testing.assert_close(model.predict(x)[0], model.predict(padded)[0], rtol=1e-5, atol=1e-5)


def _glue_folder(tmp_path):
    """A tiny SST-2 in GLUE's TSV layout and a word-level BERT tokenizer saved locally."""
    from transformers import BertTokenizerFast

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 24), ("dev", 8)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (5,), generator=rng)]
            lines.append(f"{' '.join(words)}\t{int('good' in words or 'great' in words or 'fun' in words)}")
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "tokenizer")
    return tmp_path


def test_glue_tsv_reader_and_errors(tmp_path):
    folder = _glue_folder(tmp_path)
    texts, pairs, labels = read_glue_tsv(folder / "train.tsv", "SST-2")
    assert len(texts) == len(labels) == 24 and pairs is None
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\nfine film\tmaybe\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: label 'maybe' is not one of"):
        read_glue_tsv(tmp_path / "bad.tsv", "sst-2")
    with pytest.raises(DataError, match="no column '#1 String'"):
        read_glue_tsv(folder / "train.tsv", "mrpc")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    with pytest.raises(DataError, match=r"tokens > data\.max_length=4"):
        GlueDataset(folder / "train.tsv", "sst-2", tokenizer, max_length=4)


def test_train_glue_on_local_tsv(tmp_path, capsys):
    from bramley.sharcs.cli import main
    from shared.cli_testing import QUICK_CPU_TRAIN

    folder = _glue_folder(tmp_path)
    config = "{vocab_size: 30, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 32}"
    argv = [
        "train-glue",
        "--out",
        str(tmp_path / "run"),
        *QUICK_CPU_TRAIN,
        f"data.train={folder / 'train.tsv'}",
        f"data.val={folder / 'dev.tsv'}",
        f"data.tokenizer={folder / 'tokenizer'}",
        "model.kwargs.model_type=bert",
        f"model.kwargs.config={config}",
        "model.kwargs.router_layer=1",
        "model.kwargs.router_hidden=8",
        "loss.window=1",
        "loss.warmup_epochs=1",
        "train.epochs=2",
        "optim.lr=1e-3",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sum(results["buckets"].values()) == 24 and "eval_top1" in results["metrics"]
