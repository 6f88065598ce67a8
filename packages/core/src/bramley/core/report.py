"""Output of mini reproductions: a printed markdown table, ``results.json`` with the environment, a PNG plot."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "environment", "figure", "format_table", "mean_std", "replace_marked", "write_results"]


def environment() -> dict[str, Any]:
    """Versions and hardware that a reported number depends on."""
    import torch

    env = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        # the SIMD kernels torch runs: rounding differs between them, which moves trained results (a few points over
        # a mini reproduction's epochs), so a number is only comparable on the same capability
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if hasattr(os, "getloadavg"):  # a shared machine's load moves wall times: record it next to them
        env["load_average"] = round(os.getloadavg()[0], 2)
    try:
        from importlib.metadata import version

        env["bramley-core"] = version("bramley-core")
    except Exception:
        pass
    return env


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def replace_marked(path: str | os.PathLike, tag: str, body: str) -> None:
    """Put ``body`` between the markers ``<!-- TAG:start -->`` and ``<!-- TAG:end -->`` of the markdown file ``path``
    (appended with its markers if the file has none; the file is created if missing): how a benchmark regenerates its
    table in BENCHMARKS.md or a README and leaves the prose around it alone."""
    path = Path(path)
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text, encoding="utf-8")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # float, numpy float32, ...
        return f"{float(value):.{digits}f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of ``rows`` (dicts); columns default to the first row's keys."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(row.get(c, ""), digits) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda items: "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


def write_results(
    out_dir: str | os.PathLike,
    results: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write ``results.json`` (results + environment) and ``table.md``; print the table. Returns the json path."""
    from .checkpoint import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **results}
    if rows is not None:
        payload.setdefault("table", [dict(r) for r in rows])
        table = format_table(rows, columns)
        text = (f"## {title}\n\n" if title else "") + table + "\n"
        atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
        print(text)
    path = atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    print(f"wrote {path}")
    return path


@contextlib.contextmanager
def figure(
    path: str | os.PathLike,
    *,
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] | None = None,
    dpi: int = 120,
    **subplots_kw: Any,
) -> Iterator[Any]:
    """Draw a matplotlib figure and save it to ``path``: ``with figure(path, ncols=2) as (ax1, ax2): ...``.

    Yields the axes as ``plt.subplots`` returns them (one ``Axes``, or an array for a grid). On leaving the block the
    figure gets ``tight_layout`` and is written atomically (a reader never sees a partial PNG; the format follows the
    suffix); if the block raises, nothing is written. The figure is drawn by the Agg canvas directly, outside
    ``pyplot``: the backend of the caller's session is not changed and no figure is left open. Needs matplotlib,
    the ``plot`` extra of bramley-core.
    """
    from ._optional import optional_import
    from .checkpoint import atomic_write

    with optional_import("plot", "bramley.core.report.figure"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **subplots_kw)
    yield axes
    fig.tight_layout()
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
