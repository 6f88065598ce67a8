"""UnED metrics on hand-checked cases and against a re-statement of the official per-query loop; files and errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from bramley.core.errors import DataError
from bramley.udon.uned import (
    evaluate_descriptors,
    knn_metrics,
    load_descriptors,
    read_info_file,
    save_descriptors,
)


def line(*positions: float) -> torch.Tensor:
    """2-d unit descriptors at the given angles (radians): similarity order = angular closeness."""
    angles = torch.tensor(positions, dtype=torch.float64)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_mmp_counts_only_the_first_min_k_p_neighbours():
    # one query at angle 0; index ranked by closeness: neg (0.1), pos (0.2), pos (0.3), neg (0.4), neg (0.5)
    index = line(0.1, 0.2, 0.3, 0.4, 0.5)
    r = knn_metrics(line(0.0), index, [1], [0, 1, 1, 0, 0], "a", ["a"] * 5, k=5)
    # P = 2: correct among the first 2 neighbours is 1 -> 1/2 (a plain precision over 5 would count 2)
    assert r.mmp == pytest.approx(0.5) and r.r1 == 0.0 and r.queries == 1 and r.no_positive == 0


def test_mmp_divides_by_min_p_k_and_r1_needs_domain_and_label():
    index = line(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    labels = [1, 1, 0, 1, 1, 1, 1]
    # nearest item has the right label but another domain: not correct, and not a positive
    domains = ["b", "a", "a", "a", "a", "a", "a"]
    r = knn_metrics(line(0.0), index, [1], labels, "a", domains, k=5)
    # P = 5 positives in domain a; first 5 neighbours: b-1 (no), a-1, a-0 (no), a-1, a-1 -> 3 / 5
    assert r.mmp == pytest.approx(3 / 5) and r.r1 == 0.0


def test_query_without_positive_scores_zero_and_stays_in_the_mean():
    index = line(0.1, 0.2)
    r = knn_metrics(line(0.0, 0.15), index, [0, 7], [0, 0], "a", ["a", "a"], k=5)
    # query 1: index smaller than k: P = 2, both ranked, both correct -> 1; query 2: label 7 absent -> 0
    assert r.mmp == pytest.approx(0.5) and r.r1 == pytest.approx(0.5) and r.no_positive == 1


def test_self_is_excluded_when_the_query_set_is_the_index():
    x = line(0.0, 0.05, 1.0, 1.05, 1.1)
    labels = [0, 0, 1, 1, 1]
    r = knn_metrics(x, x, labels, labels, "a", ["a"] * 5, k=5, self_rows=range(5))
    # every query's nearest other item shares its label; P = 1 (class 0) or 2 (class 1), all found first
    assert r.mmp == pytest.approx(1.0) and r.r1 == pytest.approx(1.0)


def test_multi_label_query():
    r = knn_metrics(line(0.0), line(0.1, 0.2, 0.3), [[2, 5]], [5, 1, 2], "a", ["a"] * 3, k=2)
    # positives: labels 5 and 2 -> P = 2; first 2 neighbours: 5 (yes), 1 (no) -> 1/2
    assert r.mmp == pytest.approx(0.5) and r.r1 == 1.0


def official_loop(query, index, q_labels, i_labels, q_domain, i_domains, k, throw_first):
    """The official per-query computation (knn_utils.compute_knn_metrics + metrics.universal_mmp_at_k /
    universal_classif_accuracy), restated: rank top_k (+1 with throw_first) by inner product, drop the first."""
    top_k = k + 1 if throw_first else k
    counter = Counter(label for label, d in zip(i_labels, i_domains) if d == q_domain)
    sims = query @ index.T
    mp = acc = 0.0
    for q in range(len(query)):
        nearest = sims[q].argsort(descending=True)[:top_k].tolist()
        ok = [i_labels[j] == q_labels[q] and i_domains[j] == q_domain for j in nearest]
        acc += ok[1 if throw_first else 0]
        n_label = counter[q_labels[q]]
        n_true = n_label - 1 if throw_first else n_label
        correct = sum(ok[: min(top_k, n_label)]) - (1 if throw_first else 0)
        mp += 0 if n_true == 0 else correct / min(n_true, k)
    return mp / len(query), acc / len(query)


@pytest.mark.parametrize("throw_first", [True, False])
def test_equals_the_official_loop_on_random_data(throw_first):
    g = torch.Generator().manual_seed(0)
    index = torch.nn.functional.normalize(torch.randn(60, 8, generator=g, dtype=torch.float64), dim=1)
    i_labels = torch.randint(0, 9, (60,), generator=g).tolist()
    i_domains = ["a" if i < 40 else "b" for i in range(60)]
    if throw_first:  # queries = domain a's index items (the UnED separate/merged protocol with query == index)
        query, q_labels, self_rows = index[:40], i_labels[:40], range(40)
    else:
        query = torch.nn.functional.normalize(torch.randn(25, 8, generator=g, dtype=torch.float64), dim=1)
        q_labels, self_rows = torch.randint(0, 11, (25,), generator=g).tolist(), None  # labels 9, 10: no positive
    r = knn_metrics(query, index, q_labels, i_labels, "a", i_domains, k=5, self_rows=self_rows)
    mp, acc = official_loop(query, index, q_labels, i_labels, "a", i_domains, 5, throw_first)
    assert r.mmp == pytest.approx(mp, abs=1e-6) and r.r1 == pytest.approx(acc, abs=1e-6)


def test_evaluate_descriptors_separate_and_merged():
    x = line(0.0, 0.05, 1.0, 1.05)
    y = line(0.02, 0.07, 2.0, 2.05)  # domain b sits next to domain a's class 0
    descriptors = {"a": {"test": x}, "b": {"test": y}}
    labels = {"a": {"test": [0, 0, 1, 1]}, "b": {"test": [0, 0, 1, 1]}}
    table = evaluate_descriptors(descriptors, labels, "test", k=5)
    assert table["separate"]["a"]["mmp@5"] == pytest.approx(1.0)
    # merged: a's query at 0.0 has b's 0.02 closer than its own positive at 0.05 -> R@1 drops for it
    assert table["merged"]["a"]["r@1"] < 1.0
    assert table["mean"]["separate_mmp@5"] == pytest.approx(1.0)


def test_bad_input_errors(tmp_path):
    with pytest.raises(DataError, match="8-d but index descriptors are 4-d"):
        knn_metrics(torch.randn(2, 8), torch.randn(3, 4), [0, 1], [0, 1, 1], "a", ["a"] * 3)
    with pytest.raises(DataError, match="no neighbour"):
        knn_metrics(torch.randn(1, 4), torch.randn(1, 4), [0], [0], "a", ["a"], self_rows=[0])
    with pytest.raises(DataError, match="3 descriptors for 2"):
        evaluate_descriptors({"a": {"test": torch.randn(3, 4)}}, {"a": {"test": [0, 1]}})
    with pytest.raises(DataError, match="different sizes"):
        evaluate_descriptors(
            {"a": {"test": torch.randn(2, 4)}, "b": {"test": torch.randn(2, 8)}},
            {"a": {"test": [0, 1]}, "b": {"test": [0, 1]}},
        )
    bad = tmp_path / "info.json"
    bad.write_text(json.dumps([{"path": "x.png", "class_id": "cat"}]))
    with pytest.raises(DataError, match="entry 0 has class_id 'cat'"):
        read_info_file(bad)
    descr = tmp_path / "d.json"
    descr.write_text(json.dumps({"cars": {"test": [[1.0, 2.0], [1.0]]}}))
    with pytest.raises(DataError, match="sizes"):
        load_descriptors(descr)
    descr.write_text(json.dumps({"cars": {"test": {"universal": [[1.0, 2.0]]}}}))
    with pytest.raises(DataError, match="choose one"):
        load_descriptors(descr)
    assert load_descriptors(descr, "universal")["cars"]["test"].shape == (1, 2)


def test_descriptor_round_trip(tmp_path):
    d = {"cars": {"test": torch.randn(3, 4)}, "met": {"test": torch.randn(2, 4), "index": torch.randn(5, 4)}}
    save_descriptors(tmp_path / "d.json", d)
    back = load_descriptors(tmp_path / "d.json")
    assert all(torch.allclose(back[k][s], d[k][s]) for k in d for s in d[k])
    assert isinstance(json.loads((tmp_path / "d.json").read_text())["cars"]["test"][0], list)
