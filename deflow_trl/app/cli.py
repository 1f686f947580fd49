"""The console scripts (``[project.scripts]`` in ``pyproject.toml``).

``pip install deflow_trl`` installs the core (loss, actor, sampler, networks: torch,
tensordict, torchrl, numpy). The apps need the ``app`` extra (OGBench, Hydra,
matplotlib, tqdm, scipy)::

    pip install torch==2.13.0 'deflow_trl[app]'
    deflow-train +experiment=quick          # = python -m deflow_trl.train
    deflow-generate --env cube-single-play-v0 --episodes 10
    deflow-iav --help
    deflow-summarize runs/paper

Each script first checks that the extra is installed (:func:`deflow_trl.extras.check_app_extra`)
and otherwise prints one line (``... pip install 'deflow_trl[app]'``) and exits with status 1;
the app itself is imported only after that check (a lazy import on purpose: it needs the extra).
"""
from __future__ import annotations

from deflow_trl import threads
from deflow_trl.extras import check_app_extra

__all__ = ["train", "generate", "iav", "summarize"]


# ----------------------------------------------------------------------------- console scripts
def train() -> None:
    """``deflow-train``: the Hydra training app (:func:`deflow_trl.app.train.cli`)."""
    check_app_extra("deflow-train")
    threads.prefer_short_spin()  # before torch loads its OpenMP runtime (deflow_trl/threads.py)
    from deflow_trl.app.train import cli  # lazy: the app needs the extra, checked just above

    cli()


def generate() -> None:
    """``deflow-generate``: regenerate OGBench datasets (:func:`deflow_trl.data.generate.main`)."""
    check_app_extra("deflow-generate")
    from deflow_trl.data.generate import main  # lazy: the app needs the extra, checked just above

    main()


def iav() -> None:
    """``deflow-iav``: intrinsic action variance and a proposed δ (:func:`deflow_trl.data.iav_cli.main`)."""
    check_app_extra("deflow-iav")
    from deflow_trl.data.iav_cli import main  # lazy: the app needs the extra, checked just above

    main()


def summarize() -> None:
    """``deflow-summarize``: tables and plots of finished runs (:func:`deflow_trl.app.summarize.main`)."""
    check_app_extra("deflow-summarize")
    from deflow_trl.app.summarize import main  # lazy: the app needs the extra, checked just above

    main()
