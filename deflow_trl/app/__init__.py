"""The training app, the top floor: Hydra entry point, run directories, locks, signals, checkpoints,
evaluation scheduling, summaries and console scripts.

* :mod:`deflow_trl.app.train` — ``python -m deflow_trl.train`` (Hydra); :func:`~deflow_trl.app.train.run`;
* :mod:`deflow_trl.app.config_schema` — the typed config and its value checks;
* :mod:`deflow_trl.app.agents` — agent config → ``(policy, loss)``;
* :mod:`deflow_trl.app.evaluator` — evaluation inline or in a worker process;
* :mod:`deflow_trl.app.rundir`, :mod:`~deflow_trl.app.runlock`, :mod:`~deflow_trl.app.signals`,
  :mod:`~deflow_trl.app.checkpoint` — runs that survive people and clusters;
* :mod:`deflow_trl.app.summarize`, :mod:`~deflow_trl.app.sweep_report`, :mod:`~deflow_trl.app.plot` — results;
* :mod:`deflow_trl.app.cli` — the console scripts.

Imports run one way (``docs/design.md``, "Layers"): the app may import every floor below it
(core library, envs, data); nothing below imports the app (``tests/test_layers.py``).
"""
