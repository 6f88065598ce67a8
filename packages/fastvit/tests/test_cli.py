from bramley.fastvit.cli import main


def test_help_runs(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "bramley-fastvit" in capsys.readouterr().out
