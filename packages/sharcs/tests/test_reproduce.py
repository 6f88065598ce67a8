"""The mini reproduction's --quick form: every row, the files, the bench on its saved model."""

import json

from bramley.sharcs.reproduce import main


def test_quick_reproduction(tmp_path, capsys):
    assert main(["--quick", "--seeds", "0", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| SHARCS (router argmax) |" in out and "| fixed width 0.25 |" in out
    results = json.loads((tmp_path / "results.json").read_text())
    modes = [r["mode"] for r in results["summary"]]
    assert modes == [
        "SHARCS (router argmax)",
        "SHARCS (confidence 0.5)",
        "SHARCS (confidence 0.7)",
        "SHARCS (confidence 0.9)",
        "random routing (SHARCS shares)",
        "fixed width 0.25",
        "fixed width 0.5",
        "fixed width 1",
    ]
    rows = {r["mode"]: r for r in results["summary"]}
    assert rows["random routing (SHARCS shares)"]["mflops"] == rows["SHARCS (router argmax)"]["mflops"]
    assert rows["fixed width 0.25"]["mflops"] < rows["fixed width 0.5"]["mflops"] < rows["fixed width 1"]["mflops"]
    assert (tmp_path / "sharcs.png").stat().st_size > 1000
    assert (tmp_path / "model-seed0" / "model.safetensors").is_file()
