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
from bramley.core.cli import discover_methods, main, method_main

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


def method_parser() -> tuple[argparse.ArgumentParser, list]:
    """A parser with a subcommand taking options and ``key=value`` overrides, as MethodCLI's ``train`` does."""
    seen = []
    parser = argparse.ArgumentParser(prog="bramley-demo")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train")
    train.add_argument("--out", default=None)
    train.add_argument("overrides", nargs="*")
    train.set_defaults(func=lambda args: seen.append((args.out, args.overrides)))
    other = sub.add_parser("info")
    other.set_defaults(func=lambda args: 0)
    return parser, seen


def test_console_script_runs():
    """The installed `bramley` script itself (the one subprocess here: it pays for a fresh torch import)."""
    script = Path(sys.executable).with_name("bramley")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("bramley-core 0.")


def test_passthrough_hands_over_leading_options():
    seen = []
    parser = argparse.ArgumentParser(prog="bramley-x")
    parser.add_subparsers(dest="command").add_parser("reproduce", add_help=False)
    code = method_main(parser, ["reproduce", "--quick", "--out", "d"], passthrough={"reproduce": seen.append})
    assert code == 0 and seen == [["--quick", "--out", "d"]]


def test_overrides_intermixed_with_options(capsys):
    parser, seen = method_parser()
    assert method_main(parser, ["train", "lr=1", "--out", "d", "model.depth=8", "lr=3"]) == 0
    assert seen[-1] == ("d", ["lr=1", "model.depth=8", "lr=3"]), "overrides after options, in command-line order"
    assert method_main(parser, []) == 2, "no subcommand: help and a usage error code"
    assert "usage: bramley-demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        method_main(parser, ["train", "lr=1", "--nope", "lr=2"])
    assert info.value.code == 2 and "error: unrecognized arguments: --nope lr=2" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a subcommand without overrides does not accept key=value strings
        method_main(parser, ["info", "lr=1"])
    assert "unrecognized arguments: lr=1" in capsys.readouterr().err


def test_torch_threads_sets_and_restores_the_count():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the test session runs on one thread: start from another count to see the change
    try:
        with cli.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), cli.torch_threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2, "restored after an error too"
        with cli.torch_threads(None):
            assert torch.get_num_threads() == 2, "None leaves the count as it is"
            torch.set_num_threads(3)
        assert torch.get_num_threads() == 2, "a change inside the block is undone"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("default", [1, None])
def test_threads_argument_is_a_positive_int(capsys, default):
    parser = argparse.ArgumentParser(prog="bramley-demo")
    cli.add_threads_argument(parser, default=default)
    assert parser.parse_args([]).threads == default
    assert parser.parse_args(["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--threads", "0"])
    assert info.value.code == 2 and "--threads: must be >= 1, got 0" in capsys.readouterr().err
    parser.print_help()
    assert "torch CPU threads (default" in capsys.readouterr().out
