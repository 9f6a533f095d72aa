"""``python -m studies {aapo,maxpo,async} SWEEP_DIR``: one study's tables and plot (docs/results.md) from its sweep."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies.cells import load_cells
from studies.reports import REPORTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies", description="One study's tables and plot (docs/results.md) "
                                "from its finished sweep; run from the repository root. Details: python -m pydoc "
                                "studies.reports")
    p.add_argument("study", choices=list(REPORTS), help="which study's tables and plot")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep's output directory (holds sweep.json)")
    p.add_argument("--img-dir", default=None, metavar="DIR", help="where the PNG goes (default SWEEP_DIR/report)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the study's Markdown and write its plot; 2 (with the message) when the sweep cannot be read."""
    args = build_parser().parse_args(argv)
    img = None if args.no_plot else Path(args.img_dir or Path(args.sweep_dir) / "report")
    try:
        cells = load_cells(args.sweep_dir)
        lines, written = REPORTS[args.study](cells, img)
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m studies: error: {e}", file=sys.stderr)
        return 2
    missing = sum(c.planned - len(c.runs) for c in cells)
    print(f"{args.study} study of {args.sweep_dir}: {sum(len(c.runs) for c in cells)} runs"
          + (f", {missing} planned runs missing" if missing else ""))
    print("\n".join(lines))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
