"""A method package's command line run in-process by its tests: the exit code, the output, the one-line errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

#: Train overrides for a quick run: batches of 4, no loader workers, no AMP, no progress bar, no periodic checkpoints.
QUICK_TRAIN = (
    "train.batch_size=4",
    "train.num_workers=0",
    "train.amp=none",
    "train.progress=false",
    "train.checkpoint_every=0",
)
#: :data:`QUICK_TRAIN` on the CPU.
QUICK_CPU_TRAIN = (*QUICK_TRAIN, "train.device=cpu")


@dataclass(frozen=True)
class CLI:
    """A method CLI's ``main(argv) -> int`` and its ``prog`` (``bramley-<method>``), run with pytest's ``capsys``."""

    main: Callable[[list[str]], int]
    prog: str

    def run(self, capsys, *argv) -> tuple[int, str, str]:
        """``main`` on ``argv`` (each item ``str()``-ed): (exit code, stdout, stderr)."""
        code = self.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    def help(self, capsys) -> str:
        """The ``--help`` text (argparse exits 0)."""
        with pytest.raises(SystemExit) as exit_info:
            self.main(["--help"])
        assert exit_info.value.code == 0
        return capsys.readouterr().out

    def user_error(self, capsys, argv: Sequence, message: str) -> str:
        """``argv`` exits 2 with exactly one stderr line ``<prog>: error: ...`` holding ``message``; that line."""
        code, _, err = self.run(capsys, *argv)
        assert code == 2, (argv, code, err)
        assert err.startswith(f"{self.prog}: error: ") and err.endswith("\n") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, message, err)
        return err.rstrip("\n")

    def usage_error(self, capsys, argv: Sequence, message: str) -> str:
        """argparse refuses ``argv``: SystemExit 2, its last stderr line ``bramley...: error: ...`` holding ``message``
        (the prog of a subcommand, or of ``bramley reproduce <method>``); that line."""
        with pytest.raises(SystemExit) as exit_info:
            self.main([str(a) for a in argv])
        assert exit_info.value.code == 2, argv
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("bramley") and ": error: " in last and message in last, (argv, message, last)
        return last
