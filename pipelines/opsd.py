"""Any `opsd` command from MLproject parameters: `python pipelines/opsd.py gap "model=tiny seed=1"`.

`mlflow run` passes each parameter as one quoted word; the words are split into Hydra overrides
(and the run's tracking store is used unless `tracking.uri` is given). The MLproject's `gap` and
`fit_law` entry points call it.
"""

import sys

from opsd_platform.jobs import opsd_command

if __name__ == "__main__":
    sys.exit(opsd_command(sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else opsd_command("--help", []))
