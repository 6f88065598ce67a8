"""The `bramley` umbrella command and the helpers method CLIs are built from (in-process; one real subprocess)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from bramley.core import cli
from bramley.core.cli import add_config_arguments, config_from_args, discover_methods, main, run_method_cli
from bramley.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
WORKSPACE_METHODS = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml") if p.parent.name != "core")


@pytest.fixture
def fake_methods(monkeypatch):
    """Installed methods replaced by fakes: `demo` records its calls, `broken` fails to import."""
    calls = []
    module = types.ModuleType("bramley_cli_test_plugin")

    def demo_main(argv=None):
        calls.append(list(argv))
        return 3 if argv and argv[-1] == "--fail" else 0

    module.main = demo_main
    monkeypatch.setitem(sys.modules, module.__name__, module)
    methods = {
        "broken": EntryPoint("broken", "bramley_cli_test_no_such_module:main", cli.ENTRY_POINT_GROUP),
        "demo": EntryPoint("demo", f"{module.__name__}:main", cli.ENTRY_POINT_GROUP),
    }
    monkeypatch.setattr(cli, "discover_methods", lambda: methods)
    return calls


def test_workspace_methods_are_discovered():
    assert sorted(discover_methods()) == WORKSPACE_METHODS, "every method package's `bramley.cli` entry point"


def test_help_lists_commands_and_methods(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bramley" in out and "list" in out and "reproduce" in out
    assert "Methods installed: " + ", ".join(WORKSPACE_METHODS) in out
    assert main([]) == 0 and "usage: bramley" in capsys.readouterr().out


def test_list_with_the_installed_methods(capsys):
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    methods_part, models_part = captured.out.split("Models", 1)
    for method in WORKSPACE_METHODS:
        assert f"  {method} " in methods_part and f"bramley-{method} 0." in methods_part
    assert "failed to load" not in captured.err, captured.err
    count = int(models_part.split(":")[1].split()[0])
    assert count == len(models_part.strip().splitlines()) - 1


def test_list_pattern(capsys):
    assert main(["list", "no_model_is_called_this*"]) == 0
    assert "Models matching 'no_model_is_called_this*': 0" in capsys.readouterr().out


def test_list_with_no_method_installed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "discover_methods", dict)
    assert main(["list"]) == 0
    assert "(none: install a method, e.g. `pip install bramley-mrl`)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "mrl"])
    assert info.value.code == "bramley: unknown method 'mrl' (installed: none). Install it: pip install bramley-mrl"


def test_list_survives_a_broken_method(fake_methods, capsys):
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    assert "  demo " in captured.out and "  broken " in captured.out
    assert "warning: method 'broken' failed to load: No module named 'bramley_cli_test_no_such_module'" in captured.err


def test_forwarding_to_a_method(fake_methods):
    assert main(["demo", "train", "--epochs", "2"]) == 0
    assert main(["reproduce", "demo", "--quick"]) == 0
    assert main(["reproduce", "demo", "--fail"]) == 3, "the method's exit code comes back"
    assert fake_methods == [["train", "--epochs", "2"], ["reproduce", "--quick"], ["reproduce", "--fail"]]


def test_reproduce_usage(fake_methods, capsys):
    assert main(["reproduce"]) == 2
    assert "usage: bramley reproduce <method>" in capsys.readouterr().out
    assert main(["reproduce", "--help"]) == 0
    assert "methods: broken, demo" in capsys.readouterr().out
    assert fake_methods == []


@pytest.mark.parametrize("argv", [["nosuch"], ["reproduce", "nosuch"], ["nosuch", "--help"]])
def test_unknown_method_message(fake_methods, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = "bramley: unknown method 'nosuch' (installed: broken, demo). Install it: pip install bramley-nosuch"
    assert info.value.code == message


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--nosuch"])
    assert info.value.code == 2 and "unrecognized arguments: --nosuch" in capsys.readouterr().err


def method_parser(tmp_path: Path) -> tuple[argparse.ArgumentParser, list]:
    """A method CLI built the way method packages build theirs."""
    seen = []
    parser = argparse.ArgumentParser(prog="bramley-demo")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train")
    add_config_arguments(train, default_out=str(tmp_path / "default-out"))
    train.set_defaults(func=lambda args: seen.append(config_from_args(args, {"lr": 0.1, "model": {"depth": 2}})))
    return parser, seen


def test_method_cli_helpers(tmp_path, capsys):
    parser, seen = method_parser(tmp_path)
    config_file = tmp_path / "c.yaml"
    config_file.write_text("model:\n  depth: 4\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_file), "--out", str(out), "lr=2e-3"]
    assert run_method_cli(parser, argv) == 0
    assert seen == [{"lr": 0.002, "model": {"depth": 4}}]
    assert load_config(out / "config.yaml") == seen[0], "the resolved config is saved beside the outputs"

    assert run_method_cli(parser, []) == 2, "no subcommand: help and a usage error code"
    assert "usage: bramley-demo" in capsys.readouterr().out

    assert run_method_cli(parser, ["train", "lr=fast"]) == 2
    assert "bramley-demo: error: config key 'lr' expects float like its default 0.1" in capsys.readouterr().err
    assert run_method_cli(parser, ["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_config_from_args_without_saving(tmp_path):
    args = argparse.Namespace(config=None, overrides=["lr=1"], out=tmp_path / "o")
    assert config_from_args(args, {"lr": 0.5}, save=False) == {"lr": 1.0}
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError):
        config_from_args(argparse.Namespace(config=None, overrides=["nope=1"], out=None), {"lr": 0.5})


def test_console_script_runs():
    """The installed `bramley` script itself (the one subprocess here: it pays for a fresh torch import)."""
    script = Path(sys.executable).with_name("bramley")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("bramley-core 0.")


def test_run_method_cli_passthrough_hands_over_leading_options():
    import argparse

    from bramley.core.cli import run_method_cli

    seen = []
    parser = argparse.ArgumentParser(prog="bramley-x")
    parser.add_subparsers(dest="command").add_parser("reproduce", add_help=False)
    code = run_method_cli(parser, ["reproduce", "--quick", "--out", "d"], passthrough={"reproduce": seen.append})
    assert code == 0 and seen == [["--quick", "--out", "d"]]


def test_overrides_intermixed_with_options(tmp_path, capsys):
    parser, seen = method_parser(tmp_path)
    config_file = tmp_path / "c.yaml"
    config_file.write_text("model:\n  depth: 4\n")
    out = tmp_path / "run"
    argv = ["train", "lr=1", "--out", str(out), "model.depth=8", "--config", str(config_file), "lr=3"]
    assert run_method_cli(parser, argv) == 0
    assert seen[-1] == {"lr": 3.0, "model": {"depth": 8}}, "overrides after options apply, in command-line order"
    assert load_config(out / "config.yaml") == seen[-1]
    assert run_method_cli(parser, ["train", "--out", str(out), "lr=5"]) == 0 and seen[-1]["lr"] == 5.0

    for bad in (["train", "--out", str(out), "stray"], ["train", "lr=1", "--out", str(out), "stray"]):
        assert run_method_cli(parser, bad) == 2
        assert "bramley-demo: error: override 'stray' is not of the form key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run_method_cli(parser, ["train", "lr=1", "--nope", "lr=2"])
    assert info.value.code == 2 and "error: unrecognized arguments: --nope lr=2" in capsys.readouterr().err
    # a subcommand without overrides does not accept key=value strings
    other = argparse.ArgumentParser(prog="bramley-demo")
    other.add_subparsers(dest="command").add_parser("info").set_defaults(func=lambda args: 0)
    with pytest.raises(SystemExit):
        run_method_cli(other, ["info", "lr=1"])
    assert "unrecognized arguments: lr=1" in capsys.readouterr().err
