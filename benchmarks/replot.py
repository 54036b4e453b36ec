"""Redraw benchmark figures from their saved results, measuring nothing: each NAME.json in the
results folder names the script that wrote it (machine.command), whose `draw(data)` makes NAME.png
again from exactly the figures the JSON holds (after a change to how a figure is drawn).

    python benchmarks/replot.py                 # every NAME.json whose script has draw()
    python benchmarks/replot.py length_sweep drift --results benchmarks/results
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from common import RESULTS, pyplot, write_png


def script_of(data: dict) -> str:
    """The module that wrote a result: the first word of its recorded command, without '.py'."""
    return Path(data["machine"]["command"].split()[0]).stem


def replot(name: str, results: Path) -> Path | None:
    """NAME.png from NAME.json; None when the script that wrote it has no draw()."""
    data = json.loads((results / f"{name}.json").read_text())
    module = importlib.import_module(script_of(data))
    if not hasattr(module, "draw"):
        return None
    fig = module.draw(data)
    path = write_png(name, fig, results)
    pyplot().close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="results to redraw (default: every one that can be)")
    p.add_argument("--results", default=str(RESULTS))
    a = p.parse_args(argv)
    results = Path(a.results)
    names = a.names or sorted(f.stem for f in results.glob("*.json"))
    for name in names:
        if replot(name, results) is None:
            print(f"{name}: its script draws no figure from saved results; left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
