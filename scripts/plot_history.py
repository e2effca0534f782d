"""Several runs' History curves in one figure (the book's 7-3 plots, overlaid): train solid, val dashed.

    python scripts/plot_history.py multirun/2026-11-23/10-00-00-000000 -o optimizers.png
    python scripts/plot_history.py outputs/…/run_a outputs/…/run_b/history.csv

Each argument is a history.csv or a folder searched for them (a sweep's folder holds one per job); a run is
labelled by its folder relative to the folders' common parent, e.g. a sweep job's `optimizer=adam`.
"""

import argparse
import os
import sys
from pathlib import Path

from hgmldl.figures import plot_history, save_figure
from hgmldl.history import read_history


def find_histories(paths: list[Path]) -> list[Path]:
    found = [path for path in paths if path.is_file()]
    for folder in (path for path in paths if path.is_dir()):
        found += sorted(folder.rglob("history.csv"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="history.csv files or folders holding them")
    parser.add_argument("-o", "--output", type=Path, default=Path("history.png"), help="the PNG to write")
    args = parser.parse_args()
    histories = find_histories(args.paths)
    if not histories:
        sys.exit(f"error: no history.csv in {', '.join(map(str, args.paths))}; give run folders of train.py")
    folders = [path.parent.resolve() for path in histories]
    parent = Path(os.path.commonpath(folders)) if len(folders) > 1 else folders[0].parent
    runs = {
        str(folder.relative_to(parent)): read_history(path) for folder, path in zip(folders, histories, strict=True)
    }
    print(f"{save_figure(plot_history(runs), args.output)}: {len(runs)} runs")


if __name__ == "__main__":
    main()
