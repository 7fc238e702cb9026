"""The gap: how much better the self-teacher does than the student at step 0, the number the law
predicts from. Measured with training's engine (its rollouts, contexts and scoring); used by a run
(runs.train) and, through the trial gate, by a search's pruner.

Modules: measure (the two sides, the gap and its interval), estimators (cheaper gaps from the
student's samples and one teacher scoring pass), sequential (the anytime-valid confidence sequence
and the stopping rule of ``gap.sequential``), measurements (each side stored by key and reused;
the gap a run measures).
"""
