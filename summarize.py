"""The summary a sweep writes when it ends, for a sweep folder that exists already:

    python summarize.py sweep_dir=multirun/2026-11-23/14-05-09-123456

writes summary.csv, summary.md and curves.png into it and prints the table; jobs without metrics.json are listed as
failed. Useful after a sweep that a failed job stopped, or one run before this summary existed.
Options: conf/summarize.yaml (`python summarize.py --help`).
"""

from hgmldl.commands.summarize import main

if __name__ == "__main__":
    main()
