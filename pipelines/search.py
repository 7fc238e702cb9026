"""A law-pruned Optuna search from Hydra overrides: `python pipelines/search.py model=tiny search.n_trials=6 ...`
(the same as `opsd search ...`; the MLproject's `search` entry point calls it). `--compare` runs the
same search three ways (law pruning, MedianPruner, no pruning) and writes the comparison."""

import sys

from opsd_platform.jobs import opsd_command

if __name__ == "__main__":
    words = [w for w in sys.argv[1:] if w != "--compare"]
    sys.exit(opsd_command("search", words + (["search.compare=true"] if "--compare" in sys.argv[1:] else [])))
