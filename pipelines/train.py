"""One OPSD training run from Hydra overrides: `python pipelines/train.py context=feedback ...`
(the same as `opsd train ...`; the MLproject's `train` entry point calls it)."""

import sys

from opsd_platform.jobs import opsd_command

if __name__ == "__main__":
    sys.exit(opsd_command("train", sys.argv[1:]))
