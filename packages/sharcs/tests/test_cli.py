import pytest

from bramley.sharcs.cli import main


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: bramley-sharcs" in capsys.readouterr().out
