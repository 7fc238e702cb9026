"""One MLflow run from start to finish: ``train.train(cfg)`` (a training: the initial gap, then
Lightning's fit) and ``train.run_gap(cfg)`` (a gap measurement alone). The order of operations
lives in train.py; the engine in training/, the gap in gap/.
"""
