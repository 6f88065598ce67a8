"""The bramley-gbc command line on the fixtures: stats, validate, convert, view, train/eval on graph files, and the
one-line errors of bad input."""

import json
from pathlib import Path

import numpy as np

from bramley.gbc.cli import main
from shared.cli_testing import CLI

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "sample_graphs.jsonl"
cli = CLI(main, "bramley-gbc")


def test_help_lists_the_commands(capsys):
    text = cli.help(capsys)
    for verb in ("stats", "validate", "convert", "view", "train", "eval", "bench", "reproduce", "info"):
        assert verb in text


def test_stats(capsys, tmp_path):
    code, _, _ = cli.run(capsys, "stats", SAMPLE, "--out", tmp_path / "stats.json")
    assert code == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["graphs"], stats["vertices"], stats["edges"], stats["captions"]) == (3, 12, 12, 15)
    assert stats["vertices_by_label"]["entity"] == 7 and stats["skipped"] == 0


def test_convert_round_trip_is_byte_exact(capsys, tmp_path):
    assert cli.run(capsys, "convert", SAMPLE, "--out", tmp_path / "g.parquet")[0] == 0
    assert cli.run(capsys, "convert", tmp_path / "g.parquet", "--out", tmp_path / "g.json")[0] == 0
    code, out, _ = cli.run(capsys, "convert", tmp_path / "g.json", "--out", tmp_path / "g.jsonl")
    assert code == 0 and "converted 3 graphs" in out
    assert (tmp_path / "g.jsonl").read_bytes() == SAMPLE.read_bytes()
    cli.user_error(capsys, ["convert", SAMPLE, "--out", SAMPLE], "is the source file")
    cli.user_error(capsys, ["convert", SAMPLE, "--out", tmp_path / "g.csv"], "unknown graph file format 'csv'")


def test_view(capsys):
    code, out, _ = cli.run(capsys, "view", SAMPLE)
    assert code == 0 and out.splitlines()[0] == "image <image> (0.00, 0.00, 1.00, 1.00)"
    code, out, _ = cli.run(capsys, "view", SAMPLE, "--index", 1, "--form", "structured", "--order", "dfs")
    assert code == 0 and out.startswith("Node #0 image\ntype: image") and "Node #2 hill" in out
    cli.user_error(capsys, ["view", SAMPLE, "--index", 7], "has 3 graphs; --index 7 is out of range")


def bad_file(tmp_path: Path) -> Path:
    rows = SAMPLE.read_text().splitlines()
    unknown = json.loads(rows[1])
    unknown["vertices"][1]["label"] = "animal"
    missing = json.loads(rows[2])
    del missing["vertices"][0]["descs"]
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join([rows[0], '{"vertices": [', json.dumps(unknown), json.dumps(missing), '{"vertices": []}'])
    )
    return path


def test_bad_input_names_file_and_line(capsys, tmp_path):
    path = bad_file(tmp_path)
    code, out, err = cli.run(capsys, "validate", path)
    assert code == 2 and "5 graphs, 4 invalid, 0 warnings" in out
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}:line 2: error: malformed JSON")
    expected = "unknown label 'animal' (expected one of image, entity, composition, relation)"
    assert lines[1] == f"{path}:line 3: error: vertex 'kite': {expected}"
    assert lines[2] == f"{path}:line 4: error: vertices[0]: missing required field 'descs'"
    assert lines[3] == f"{path}:line 5: error: empty graph: no vertices"
    assert err == "bramley-gbc: error: 4 of 5 graphs are invalid (listed above; --skip-invalid accepts that)\n"
    assert cli.run(capsys, "validate", path, "--skip-invalid")[0] == 0
    cli.user_error(capsys, ["stats", path], "bad.jsonl:line 2: malformed JSON")
    code, out, err = cli.run(capsys, "stats", path, "--skip-invalid")
    assert code == 0 and json.loads(out)["graphs"] == 1 and json.loads(out)["skipped"] == 4
    assert "1 graphs read, 4 invalid skipped" in err
    cli.user_error(capsys, ["stats", tmp_path / "none.jsonl"], "none.jsonl: no such graph file")


def write_images(root: Path, size: int = 16) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("dog_table", "kite", "wall"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")


def test_train_and_eval_on_graph_files(capsys, tmp_path):
    files = [
        "data.source=files",
        f"data.train_files=[{SAMPLE}]",
        f"data.val_files=[{SAMPLE}]",
        f"data.image_root={tmp_path}",
        "train.batch_size=3",
        "train.steps=1",
    ]
    out = tmp_path / "run"
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", out, *files], "3 training images missing under")
    write_images(tmp_path)
    code, stdout, _ = cli.run(capsys, "train", "--recipe", "smoke", "--out", out, *files)
    assert code == 0 and (out / "model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["metrics"]["step"] == 1
    code, stdout, _ = cli.run(capsys, "eval", "--checkpoint", out, "--files", SAMPLE, "--image-root", tmp_path)
    metrics = json.loads(stdout)["metrics"]
    assert code == 0 and set(metrics) == {
        "image_to_text_R@1",
        "image_to_text_R@5",
        "text_to_image_R@1",
        "text_to_image_R@5",
    }
    cli.user_error(
        capsys, ["train", "--recipe", "smoke", "--out", tmp_path / "r2", "loss.mode=graph"], "loss.mode must be"
    )
    cli.user_error(
        capsys,
        ["train", "--recipe", "smoke", "--out", tmp_path / "r3", "data.drop_vertex_types=[image]"],
        "unknown vertex type 'image'",
    )


def test_reproduce_quick(capsys, tmp_path):
    code, _, _ = cli.run(capsys, "reproduce", "--quick", "--out", tmp_path / "rep")
    assert code == 0
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["quick"] and len(results["per_seed"]) == 1 and (tmp_path / "rep" / "gbc.png").is_file()
    assert set(results["per_seed"][0]["scores"]) == {
        "a_short",
        "b_captions",
        "b_no_composition",
        "b_no_relation",
        "c_sia",
    }
    assert set(results["claims"]) >= {"b_beats_a_R@1", "c_beats_b_R@1"}
