"""bramley.core.checkpoint: safetensors round trips, pretrained folders, and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bramley.core import checkpoint, registry
from bramley.core.checkpoint import (
    CheckpointError,
    atomic_write,
    from_pretrained,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    save_pretrained,
)
from bramley.core.registry import create_model, register_model


class Net(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3, tied: bool = False):
        super().__init__()
        self.embed = nn.Linear(width, width, bias=False)
        self.norm = nn.BatchNorm1d(width)  # buffers (running stats, num_batches_tracked) travel too
        self.head = nn.Linear(width, num_classes if not tied else width, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.norm(self.embed(x)))


@pytest.fixture(autouse=True)
def ckpt_test_net(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model(name="ckpt_test_net")(Net)


def trained(model: nn.Module) -> nn.Module:
    """Weights and running statistics that differ from a fresh init."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, model.embed.in_features))
    return model.eval()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_with_config_in_metadata(tmp_path):
    model = trained(create_model("ckpt_test_net", width=5, num_classes=2))
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"step": "12"})
    meta = read_metadata(path)
    assert meta["bramley_config"] == {"name": "ckpt_test_net", "kwargs": {"width": 5, "num_classes": 2}}
    assert meta["step"] == "12"

    fresh = create_model(**{"name": meta["bramley_config"]["name"]}, **meta["bramley_config"]["kwargs"])
    state = load_checkpoint(path, fresh)
    assert_same_state(model, fresh)
    assert state.keys() == model.state_dict().keys()
    x = torch.randn(4, 5)
    assert torch.equal(model(x), fresh.eval()(x))


def test_state_dict_and_explicit_config(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)[:, 1:]}  # a non-contiguous view is saved as its values
    path = save_checkpoint(state, tmp_path / "s.safetensors", config={"name": "x", "kwargs": {"a": [1, 2]}})
    assert read_metadata(path)["bramley_config"] == {"name": "x", "kwargs": {"a": [1, 2]}}
    assert torch.equal(load_checkpoint(path)["w"], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    assert "bramley_config" not in read_metadata(save_checkpoint(state, tmp_path / "plain.safetensors"))


def test_unserialisable_inputs_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.safetensors", config={"fn": print})
    with pytest.raises(CheckpointError, match="state dict entry 'step' is a int, not a tensor"):
        save_checkpoint({"w": torch.zeros(1), "step": 3}, tmp_path / "b.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_from_pretrained(tmp_path):
    model = trained(create_model("ckpt_test_net", width=6))
    folder = save_pretrained(model, tmp_path / "pretrained")
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == {"name": "ckpt_test_net", "kwargs": {"width": 6}}

    loaded = from_pretrained(folder)
    assert isinstance(loaded, Net) and loaded.model_config == model.model_config
    assert_same_state(model, loaded)
    x = torch.randn(3, 6)
    assert torch.equal(model(x), loaded.eval()(x))

    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(3, 6\) vs model \(4, 6\)"):
        from_pretrained(folder, num_classes=4)  # overrides reach the factory, and must still fit the weights


def test_pretrained_folder_problems(tmp_path):
    with pytest.raises(CheckpointError, match="model has no model_config"):
        save_pretrained(Net(), tmp_path / "no-config")
    save_pretrained(Net(), tmp_path / "explicit", config={"name": "ckpt_test_net", "kwargs": {}})
    assert isinstance(from_pretrained(tmp_path / "explicit"), Net)

    with pytest.raises(CheckpointError, match=r"empty has no config.json; is it a save_pretrained folder \(or a finis"):
        from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad/config.json is not valid JSON"):
        from_pretrained(bad)
    for text in ('{"kwargs": {}}', '["name"]', '{"name": "ckpt_test_net", "kwargs": [1]}'):
        (bad / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match=r"bad/config.json: the model config must be \{'name': str"):
            from_pretrained(bad)
    (bad / "config.json").write_text('{"name": "no_such_model", "kwargs": {}}')
    with pytest.raises(CheckpointError, match=r"bad/config.json: unknown model 'no_such_model'"):
        from_pretrained(bad)
    (bad / "config.json").write_text('{"name": "ckpt_test_net", "kwargs": {"nope": 1}}')
    with pytest.raises(CheckpointError, match=r"bad/config.json: ckpt_test_net\(nope=1\) failed: .*unexpected keyword"):
        from_pretrained(bad)
    (bad / "config.json").write_text('{"name": "ckpt_test_net", "kwargs": {}}')
    with pytest.raises(CheckpointError, match=r"checkpoint .*bad/model.safetensors does not exist"):
        from_pretrained(bad)


def test_tied_weights(tmp_path):
    model = trained(Net(tied=True))
    assert model.head.weight is model.embed.weight
    path = save_checkpoint(model, tmp_path / "tied.safetensors")
    state = load_checkpoint(path)
    assert torch.equal(state["head.weight"], state["embed.weight"])
    fresh = Net(tied=True)
    load_checkpoint(path, fresh)
    assert fresh.head.weight is fresh.embed.weight, "loading must not untie the parameters"
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_mismatches_list_every_key(tmp_path):
    path = save_checkpoint(Net(width=4), tmp_path / "m.safetensors")
    state = load_checkpoint(path)

    class Renamed(Net):
        def __init__(self):
            super().__init__(width=4)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, Renamed())
    message = str(info.value)
    assert str(path) in message and "does not match Renamed" in message
    assert "missing keys (2): extra.bias, extra.weight" in message
    assert "unexpected keys" not in message

    state["stray.weight"] = torch.zeros(1)
    save_checkpoint(state, tmp_path / "stray.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): stray.weight"):
        load_checkpoint(tmp_path / "stray.safetensors", Net(width=4))

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, Net(width=4, num_classes=5))
    assert "shape mismatches (1): head.weight: checkpoint (3, 4) vs model (5, 4)" in str(info.value)


def test_non_strict_loading(tmp_path):
    source = trained(Net(width=4))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    state["stray"] = torch.zeros(2)
    path = save_checkpoint(state, tmp_path / "partial.safetensors")
    target = Net(width=4)
    head_before = target.head.weight.clone()
    load_checkpoint(path, target, strict=False)
    assert torch.equal(target.embed.weight, source.embed.weight)
    assert torch.equal(target.head.weight, head_before)
    with pytest.raises(
        CheckpointError, match=r"shape mismatches \(6\): embed.weight: checkpoint \(3, 3\) vs model \(4, 4\)"
    ):
        load_checkpoint(save_checkpoint(Net(width=3), tmp_path / "w3.safetensors"), Net(width=4), strict=False)


def test_many_missing_keys_are_summarised(tmp_path):
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(1, 1) for _ in range(15))

    path = save_checkpoint({"other": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(30\): layers.0.bias, .* \.\.\.") as info:
        load_checkpoint(path, Wide())
    assert str(info.value).count("layers.") == 20


@pytest.mark.parametrize("problem", ["corrupt", "truncated", "empty", "missing", "directory", "bad-config"])
def test_unreadable_files_name_the_file(tmp_path, problem):
    good = save_checkpoint(trained(Net()), tmp_path / "good.safetensors", config={"name": "ckpt_test_net"})
    path = tmp_path / f"{problem}.safetensors"
    if problem == "corrupt":
        path.write_bytes(os.urandom(4096))
    elif problem == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size - 10])
    elif problem == "empty":
        path.write_bytes(b"")
    elif problem == "directory":
        path.mkdir()
    elif problem == "bad-config":  # a valid file whose header carries a broken config
        save_checkpoint(Net(), path, metadata={"bramley_config": "{broken"})
    if problem == "missing":
        expected = f"checkpoint {path} does not exist"
    elif problem == "bad-config":
        expected = f"checkpoint {path}: metadata 'bramley_config' is not valid JSON"
    else:
        expected = f"checkpoint {path} is not a readable safetensors file"
    with pytest.raises(CheckpointError) as info:
        if problem == "bad-config":
            read_metadata(path)
        else:
            load_checkpoint(path, Net())
    assert expected in str(info.value)
    if problem not in ("bad-config", "missing"):
        with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
            read_metadata(path)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "model.safetensors"
    original = save_checkpoint(trained(Net()), target)
    before = original.read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash_mid_write)
    with pytest.raises(CheckpointError, match=r"cannot write .*model.safetensors: disk full"):  # one line, no OSError
        save_checkpoint(Net(), target)
    assert target.read_bytes() == before, "the previous checkpoint must survive a failed save"
    left = sorted(p.name for p in target.parent.iterdir())
    assert left == ["SHA256SUMS", "model.safetensors"], "temporary file left behind"

    fresh = tmp_path / "new" / "never.safetensors"
    with pytest.raises(CheckpointError):
        save_checkpoint(Net(), fresh)
    assert list(fresh.parent.iterdir()) == []


def test_atomic_write_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("hello"))
    assert path.read_text() == "hello"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "mkstemp's private 0600 must not leak into outputs"


def test_from_pretrained_returns_eval_mode(tmp_path):
    import torch.nn as nn

    from bramley.core.checkpoint import from_pretrained, save_pretrained
    from bramley.core.registry import _REGISTRY, register_model

    @register_model(name="_eval_mode_probe")
    def _eval_mode_probe():
        return nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))

    try:
        from bramley.core import create_model

        save_pretrained(create_model("_eval_mode_probe"), tmp_path)
        assert not from_pretrained(tmp_path).training
    finally:
        _REGISTRY.pop("_eval_mode_probe", None)


# ---------------------------------------------------------------------------------------------------- load_model
def test_load_model_from_every_kind_of_spec(tmp_path):
    from bramley.core.checkpoint import load_model

    model = trained(create_model("ckpt_test_net", width=6))
    folder = save_pretrained(model, tmp_path / "folder")
    x = torch.randn(3, 6)
    for spec in (folder, str(folder), folder / "model.safetensors"):
        loaded = load_model(spec)
        assert not loaded.training, "models come back in eval mode"
        assert loaded.model_config == model.model_config and torch.equal(loaded(x), model(x))
    fresh = load_model("ckpt_test_net", width=5)
    assert isinstance(fresh, Net) and fresh.embed.in_features == 5 and not fresh.training
    assert load_model(folder, num_classes=3).head.out_features == 3, "keyword arguments reach the factory"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "ckpt_test_nett", r"'ckpt_test_nett' is neither a model folder, .* \(did you mean ckpt_test_net"),
        (lambda d: str(d / "missing" / "model.safetensors"), r"missing/model.safetensors does not exist"),
        (lambda d: str(d / "missing.safetensors"), r"missing.safetensors does not exist"),
        (lambda d: str(d), r"has no config.json; is it a save_pretrained folder \(or a finished run\)\?"),
    ],
)
def test_load_model_errors_name_the_problem(tmp_path, make, message):
    from bramley.core.checkpoint import load_model

    with pytest.raises(CheckpointError, match=message):
        load_model(make(tmp_path))


def test_load_model_refuses_files_it_cannot_trust(tmp_path):
    from bramley.core.checkpoint import load_model

    pickled = tmp_path / "official.pth"
    torch.save({"weight": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError, match=r"official.pth is not a .safetensors file: bramley loads safetensors"):
        load_model(pickled)
    bare = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match=r"bare.safetensors carries no bramley model config"):
        load_model(bare)
    listed = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "listed.safetensors", config=["ckpt_test_net"])
    with pytest.raises(CheckpointError, match=r"listed.safetensors: the model config must be \{'name': str"):
        load_model(listed)
    truncated = tmp_path / "truncated.safetensors"
    data = save_checkpoint(trained(Net()), tmp_path / "whole.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.safetensors is not a readable safetensors file"):
        load_model(truncated)
    foreign = save_checkpoint(trained(Net(width=4)), tmp_path / "w4.safetensors", config={"name": "ckpt_test_net"})
    with pytest.raises(CheckpointError, match=r"w4.safetensors does not match Net: shape mismatches"):
        load_model(foreign, width=5)


# ---------------------------------------------------------------------------------------------------- checksums
def test_written_files_prove_they_are_whole(tmp_path):
    import hashlib
    import subprocess

    from bramley.core.checkpoint import load_model

    folder = save_pretrained(trained(create_model("ckpt_test_net")), tmp_path / "m")
    manifest = (folder / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in manifest] == ["config.json", "model.safetensors"]
    for line in manifest:
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, "the manifest is in sha256sum's format"
    load_model(folder)

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match its checksum in .*SHA256SUMS"):
        load_model(folder)
    folder = save_pretrained(trained(create_model("ckpt_test_net")), tmp_path / "m2")
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(CheckpointError, match=r"config.json does not match its checksum"):
        from_pretrained(folder)


def test_files_without_a_manifest_load_as_before(tmp_path):
    folder = save_pretrained(trained(create_model("ckpt_test_net")), tmp_path / "m")
    (folder / "SHA256SUMS").unlink()
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert isinstance(from_pretrained(folder), Net), "a downloaded folder has no manifest: nothing to check"


def test_a_kill_between_rename_and_manifest_update_leaves_a_valid_folder(tmp_path, monkeypatch):
    """The manifest lists the new sum beside the old before the rename: either file version verifies."""
    path = save_checkpoint(trained(Net()), tmp_path / "w.safetensors")
    old_bytes = path.read_bytes()

    def killed_after_rename(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the kill, right after os.replace

    real_record = checkpoint._record_checksum
    calls = []

    def record(path_, digest, keep_others):
        calls.append(keep_others)
        if not keep_others:
            killed_after_rename()
        real_record(path_, digest, keep_others)

    monkeypatch.setattr(checkpoint, "_record_checksum", record)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(trained(Net()), path)
    assert calls == [True, False] and path.read_bytes() != old_bytes
    monkeypatch.setattr(checkpoint, "_record_checksum", real_record)
    load_checkpoint(path)  # the new file verifies (its sum was listed before the rename)
    assert len((tmp_path / "SHA256SUMS").read_text().splitlines()) == 2
    save_checkpoint(trained(Net()), path)
    assert len((tmp_path / "SHA256SUMS").read_text().splitlines()) == 1, "a completed write keeps one sum per file"
