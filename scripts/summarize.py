"""The summary a sweep writes when it ends, for a sweep folder that exists already:

    python scripts/summarize.py multirun/2026-11-23/14-05-09-123456

writes summary.csv, summary.md and curves.png into it and prints the table; jobs without metrics.json are listed as
failed. Useful after a sweep that a failed job stopped, or one run before this summary existed.
"""

import argparse

from hgmldl.errors import one_line_errors
from hgmldl.sweep import summarize


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun folder (the one holding multirun.yaml)")
    summarize(parser.parse_args().sweep_dir)


if __name__ == "__main__":
    main()
