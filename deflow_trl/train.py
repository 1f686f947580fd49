"""Forwarder: the training app is :mod:`deflow_trl.app.train`; ``python -m deflow_trl.train`` keeps working.

Imported, this module *is* :mod:`deflow_trl.app.train` (the same object in ``sys.modules``), so
``deflow_trl.train.run`` and a ``monkeypatch`` on ``deflow_trl.train`` reach the real functions.
"""
import sys

if __name__ == "__main__":
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.train")
    from deflow_trl import threads

    threads.prefer_short_spin()  # before torch loads its OpenMP runtime (deflow_trl/threads.py)
    from deflow_trl.app.train import cli

    cli()
else:
    from deflow_trl.app import train as _app_train

    sys.modules[__name__] = _app_train
