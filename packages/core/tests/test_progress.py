"""bramley.core.progress: a line with rate and ETA in logs, a tqdm bar on terminals, silence on request."""

from __future__ import annotations

import io
import re

import pytest

from bramley.core.progress import progress, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_in_a_log(monkeypatch):
    monkeypatch.delenv("BRAMLEY_PROGRESS", raising=False)
    log = io.StringIO()
    reporter = progress(10, "embed", "images", every_s=0.0, file=log)
    reporter.update(4)
    reporter.set_postfix(loss="1.25")
    reporter.update(1)
    reporter.close()
    lines = log.getvalue().splitlines()
    assert re.fullmatch(r"embed: 4/10 images \(40%\), [0-9.e+]+ images/s, ETA \d+s", lines[0]), lines[0]
    assert lines[1].startswith("embed: 5/10 images (50%)") and lines[1].endswith(", loss=1.25")
    assert lines[-1].startswith("embed: 5/10 images (50%)"), "closing prints the final state"


def test_no_total_and_quiet_periods(monkeypatch):
    monkeypatch.delenv("BRAMLEY_PROGRESS", raising=False)
    log = io.StringIO()
    with progress(None, "scan", every_s=3600.0, file=log) as reporter:
        for _ in range(1000):
            reporter.update()
    assert log.getvalue().count("\n") == 1, "a line per period, and one at the end"
    assert log.getvalue().startswith("scan: 1000 it, ")


@pytest.mark.parametrize(("setting", "expect_bar"), [("", True), ("1", False)])
def test_terminal_gets_a_bar_unless_lines_are_asked_for(monkeypatch, setting, expect_bar):
    monkeypatch.setenv("BRAMLEY_PROGRESS", setting)
    screen = Terminal()
    with progress(3, "train", "steps", every_s=0.0, file=screen) as reporter:
        reporter.update(3)
    text = screen.getvalue()
    assert ("\r" in text) == expect_bar and "3/3" in text


def test_silenced(monkeypatch):
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    for file in (io.StringIO(), Terminal()):
        with progress(3, "train", every_s=0.0, file=file) as reporter:
            reporter.update(3)
        assert file.getvalue() == ""


def test_track_counts_an_iterable(monkeypatch, capsys):
    monkeypatch.setenv("BRAMLEY_PROGRESS", "1")
    assert list(track(range(5), desc="eval", unit="batches")) == list(range(5))
    assert "eval: 5/5 batches (100%)" in capsys.readouterr().err
