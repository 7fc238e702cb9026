"""The main job on its embedded default: one short OPSD training of SmolLM2-135M-Instruct on
arithmetic with the reference answer as privileged context, tracked in the local MLflow store.

    python pipelines/demo.py [hydra overrides ...]     (what `make demo` runs)
"""

import sys

from opsd_platform.cli import main

DEMO_OVERRIDES = ["context=reference", "trainer.max_steps=10"]

if __name__ == "__main__":
    sys.exit(main(["train", *DEMO_OVERRIDES, *sys.argv[1:]]))
