"""One MLflow run from start to finish: ``train.train(cfg)`` (a training: the initial gap, then
Lightning's fit) and ``train.run_gap(cfg)`` (a gap measurement alone). The order of operations
lives in train.py; gate.py is the one object a search decides through; the engine is in
training/, the gap in gap/.
"""
