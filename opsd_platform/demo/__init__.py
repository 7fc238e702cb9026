"""The demo (README command one, `make demo`): predict before training, on configurations the
recorded benchmark does not hold.

    1. the law      fit-law on the recorded table (benchmarks/data/runs.csv, slice
                    law-arithmetic: real runs, each row naming the MLflow run that produced it),
                    registered in a fresh local store ($OPSD_HOME/demo/mlflow.db)
    2. live gaps    a new seed (one the table lacks) of a few of the slice's configurations,
                    at the benchmark's gap settings; the student side is measured once and shared
    3. decide       each candidate's prediction and interval, printed before anything trains, and
                    the search's own decision (pruner.decide_policy) against the best recorded
                    configuration; the survivors train at the benchmark's settings, as a grid of
                    2 worker processes x 1 torch thread (grid.run_grid), capped to the time budget
    4. report       predicted vs measured per trained configuration, and the compute the
                    pruning saved; a law whose slope interval holds 0 is said to be noise
    5. ranked       the ranked search's policy (search.strategy=ranked) on the same candidates,
                    the law as its prior, the live gaps as its phase 1: best predicted first,
                    stopped when no upper bound reaches what it measured; a candidate it asks for
                    that step 3 did not train trains now, within the budget and demo.max_train

Re-running resumes: the gaps come from the measurement store, finished trainings from the grid's
runs. ``demo.*`` overrides change the demo (``DemoConfig``); any other override is a training
setting applied after the benchmark's (``model=tiny ...``: the smoke run of pipelines/demo.py).

Modules: ranked.py, step 5's walk and its lines; decide.py, the pure functions (``recorded_configs``, ``choose_candidates``, ``new_seed``, ``best_recorded``,
``law_verdict``, ``training_cap``, ``plan``, ``savings``, ``outcome_rows``, ``summary_text``)
hold every choice and every number of the report; run.py's ``run_demo`` only gathers their inputs.
"""

from opsd_platform.demo.decide import (  # noqa: F401
    DEMO_ALIAS,
    GRID_NAME,
    SMOKE_OVERRIDES,
    Candidate,
    DemoConfig,
    DemoReport,
    Outcome,
    Plan,
    Savings,
    Verdict,
    best_recorded,
    choose_candidates,
    decide_all,
    decision_line,
    law_verdict,
    new_seed,
    outcome_rows,
    outcome_table,
    plan,
    recorded_configs,
    savings,
    summary_text,
    training_cap,
)
from opsd_platform.demo.run import (  # noqa: F401
    DemoResult,
    demo_store,
    measured_runs,
    provenance,
    run_demo,
    slice_of,
    table_rows,
    write_spec,
)
