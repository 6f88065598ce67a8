import io
import json
import re
import shlex
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from bramley.byteformer.audio import encode_wav, quantize, read_wav
from bramley.byteformer.cli import main
from bramley.byteformer.datasets import ByteFolder, DigitsImages, SyntheticAudio, audio_bytes, digits_bytes
from bramley.byteformer.encodings import invert_transforms
from shared.markdown import code_blocks


def run(argv):
    return main(["encode", *(str(a) for a in argv)])


def test_digits_dataset_to_tiff_folder(tmp_path, capsys):
    out = tmp_path / "digits"
    assert run(["--dataset", "digits", "--spec", "tiff", "--split", "val", "--image-size", "12", "--out", out]) == 0
    assert "encoded 179 files as tiff" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoding"]["spec"] == "tiff" and manifest["count"] == 179
    assert manifest["source"] == {"dataset": "digits", "split": "val", "seed": 0, "image_size": 12, "channels": 3}
    assert manifest["classes"] == [str(i) for i in range(10)]
    images = DigitsImages("val", image_size=12)
    for record in manifest["files"][:5]:
        index = int(record["path"].split("/")[-1].split(".")[0])
        assert record["path"] == f"val/{record['label']}/{index:05d}.tif"
        data = (out / record["path"]).read_bytes()
        assert record["bytes"] == len(data)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), images[index][0])
        assert images[index][1] == int(record["label"])
    folder = ByteFolder(out / "val")
    assert len(folder) == 179 and folder.classes == [str(i) for i in range(10)]


def test_obfuscated_digits_invert_to_valid_files(tmp_path):
    out = tmp_path / "obf"
    run(["--dataset", "digits", "--spec", "png:9+permute:5", "--split", "test", "--image-size", "8", "--out", out])
    path = sorted((out / "test" / "3").iterdir())[0]
    assert path.suffix == ".bin"
    with pytest.raises(UnidentifiedImageError):  # obfuscated bytes are not a PNG any more
        Image.open(path)
    restored = invert_transforms(np.fromfile(path, np.uint8), "permute:5")
    image = np.asarray(Image.open(io.BytesIO(restored.tobytes())))
    assert image.shape == (8, 8, 3)


def test_audio_dataset_to_wav_folder(tmp_path):
    out = tmp_path / "audio"
    run(["--dataset", "audio", "--spec", "wav:int16", "--clips-per-class", "1", "--out", out])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 3 * 6 and manifest["source"]["sample_rate"] == 8000
    source = SyntheticAudio("train", clips_per_class=1)
    record = next(r for r in manifest["files"] if r["split"] == "train")
    index = int(record["path"].split("/")[-1].split(".")[0])
    with wave.open(str(out / record["path"])) as reader:
        assert reader.getframerate() == 8000 and reader.getsampwidth() == 2
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    np.testing.assert_array_equal(samples, quantize(source[index][0], "int16")[0])


def test_image_files_and_folders(tmp_path, image_folder, capsys):
    (image_folder / "notes.txt").write_text("not an image")
    loose = tmp_path / "loose.png"
    Image.fromarray(np.full((30, 40, 3), 9, np.uint8)).save(loose)
    out = tmp_path / "out"
    run([image_folder, loose, "--spec", "png", "--image-size", "16", "--out", out])
    assert "skipped 1 files" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 13 and manifest["skipped"] == [str(image_folder / "notes.txt")]
    assert manifest["classes"] == ["cat", "dog", "fox"]
    assert np.asarray(Image.open(out / "loose.png")).shape == (16, 16, 3)
    assert np.asarray(Image.open(out / "cat" / "0.png")).shape == (16, 16, 3)
    assert len(ByteFolder(out, extensions=[".png"])) == 12

    exact = tmp_path / "exact"
    run([image_folder / "dog", "--spec", "tiff", "--out", exact])
    original = np.asarray(Image.open(image_folder / "dog" / "1.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(exact / "1.tif")), original)


def test_random_transforms_are_seeded(tmp_path, image_folder):
    outs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        outs[name] = tmp_path / name
        run([image_folder, "--spec", "fhwc+noise:20", "--seed", seed, "--out", outs[name]])
    read = {k: (v / "fox" / "2.bin").read_bytes() for k, v in outs.items()}
    assert read["a"] == read["b"] != read["c"]


def test_wav_files_are_re_encoded(tmp_path):
    src = tmp_path / "src" / "yes"
    src.mkdir(parents=True)
    waveform = np.sin(np.linspace(0, 30, 200))
    (src / "clip.wav").write_bytes(encode_wav(waveform, 16000, "float32").tobytes())
    out = tmp_path / "out"
    run([tmp_path / "src", "--spec", "wav:uint8", "--out", out])
    back, rate, dtype = read_wav((out / "yes" / "clip.wav").read_bytes())
    assert (rate, dtype) == (16000, "uint8") and np.abs(back[0] - waveform).max() < 0.005


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--dataset", "digits", "--spec", "tif"], "valid choices: tiff"),
        (["--dataset", "digits", "--spec", "wav"], "cannot be encoded as 'wav'"),
        (["--spec", "tiff"], "not both and not neither"),
        (["missing.png", "--spec", "tiff"], "does not exist"),
        (["{file}", "--spec", "wav"], r"needs audio \(\.wav\) files"),
        (["{dir}", "--spec", "wav"], r"no \.wav files"),
        (["{bad}", "--spec", "tiff"], "cannot read"),
    ],
)
def test_errors(tmp_path, image_folder, capsys, argv, match):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    fill = {"{file}": str(image_folder / "cat" / "0.png"), "{dir}": str(image_folder), "{bad}": str(bad)}
    argv = [fill.get(a, a) for a in argv] + ["--out", tmp_path / "out"]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bramley-byteformer: error: ") and err.count("\n") == 1 and re.search(match, err), err


@pytest.mark.parametrize("option", ["--image-size", "--clips-per-class", "--sample-rate"])
def test_counts_must_be_positive(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "audio", "--spec", "wav", option, "0", "--out", tmp_path / "out"])
    assert exit_info.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


def test_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = ["--dataset", "digits", "--spec", "tiff", "--split", "val", "--image-size", "8", "--out", out]
    assert run(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert run([*argv, "--overwrite"]) == 0 and (out / "keep.txt").read_text() == "precious"


DOCS = Path(__file__).resolve().parents[1] / "docs" / "encodings.md"


def _blocks(language):
    return code_blocks(DOCS, language)


def test_docs_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, str(DOCS), "exec"), {})


def test_docs_encode_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    for line in commands:
        prefix, _, rest = line.partition("bramley byteformer encode ")
        assert prefix == "" and rest
        assert run(shlex.split(rest)) == 0
    assert "encoded" in capsys.readouterr().out


def test_docs_length_tables_are_current():
    """Every row of the byte-length tables in docs/encodings.md is recomputed from the bundled data."""
    tables = re.findall(r"\| Spec \((.*?)\) \| mean \| min \| max \|\n\|[-| ]+\|\n((?:\|.*\|\n)+)", DOCS.read_text())
    assert len(tables) == 3
    for title, rows in tables:
        for row in rows.strip().splitlines():
            spec, mean, low, high = (cell.strip(" `") for cell in row.strip("|").split("|"))
            if title.startswith("synthetic audio"):
                lengths = audio_bytes(spec, "train").lengths()
            else:
                size = int(re.search(r"(\d+)x\1", title).group(1))
                lengths = digits_bytes(spec, "train", image_size=size).lengths()
            assert (round(lengths.mean()), lengths.min(), lengths.max()) == (int(mean), int(low), int(high)), spec
