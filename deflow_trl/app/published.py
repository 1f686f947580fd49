"""Published OGBench numbers that ``deflow_trl.app.summarize`` prints beside a sweep's own.

Source: the DeFlow paper (Decoupling Manifold Modeling and Value Maximization
for Offline Policy Extraction, arXiv 2601.10471), its state-based OGBench table:
per suite, the average over the suite's 5 single-task datasets of the success
rate in percent, with 8 seeds per task, for DeFlow and for FQL (Flow Q-Learning,
Park et al., arXiv 2502.02538, the paper's main baseline, reported with the same
protocol). Per run, the score is the mean of the last three evaluations
(800K, 900K, 1M steps; 50 episodes each). The values are those collected in the
project's design reference (``docs/design.md`` §3); ``tests/test_summarize.py``
checks this module against that text.

    >>> from deflow_trl.app.published import PUBLISHED
    >>> PUBLISHED["puzzle-3x3-play"]
    {'DeFlow': 43.0, 'FQL': 30.0}

Keys are the suite names of ``deflow_trl/configs/env/*.yaml`` (``env.name``); only means
are given (the design reference does not carry the papers' standard deviations).
"""
from __future__ import annotations

SOURCE = "DeFlow paper (arXiv 2601.10471), OGBench state-based table: 5-task average success %, 8 seeds (FQL: arXiv 2502.02538)"

# suite (env.name) -> {method: 5-task average success % over 8 seeds}
PUBLISHED: dict[str, dict[str, float]] = {
    "antmaze-large-navigate": {"DeFlow": 81.0, "FQL": 79.0},
    "antmaze-giant-navigate": {"DeFlow": 12.0, "FQL": 9.0},
    "humanoidmaze-medium-navigate": {"DeFlow": 48.0, "FQL": 58.0},
    "humanoidmaze-large-navigate": {"DeFlow": 5.0, "FQL": 4.0},
    "antsoccer-arena-navigate": {"DeFlow": 67.0, "FQL": 60.0},
    "cube-single-play": {"DeFlow": 96.0, "FQL": 96.0},
    "cube-double-play": {"DeFlow": 40.0, "FQL": 29.0},
    "scene-play": {"DeFlow": 51.0, "FQL": 56.0},
    "puzzle-3x3-play": {"DeFlow": 43.0, "FQL": 30.0},
    "puzzle-4x4-play": {"DeFlow": 11.0, "FQL": 17.0},
}

# The pixel-based manipulation suites, one number over all of them (5 tasks each).
PUBLISHED_VISUAL_MANIPULATION: dict[str, float] = {"DeFlow": 69.0, "FQL": 65.0}

# Offline (1M steps) -> offline-to-online (+1M env steps) success %, DeFlow.
PUBLISHED_OFFLINE_TO_ONLINE: dict[str, tuple[float, float]] = {
    "humanoidmaze-medium-navigate": (13.0, 65.0),
    "antsoccer-arena-navigate": (44.0, 86.0),
    "cube-double-play": (48.0, 93.0),
    "scene-play": (58.0, 100.0),
    "puzzle-4x4-play": (4.0, 100.0),
}

METHODS = ("DeFlow", "FQL")


def published(suite: str) -> dict[str, float]:
    """``{"DeFlow": %, "FQL": %}`` for a suite name (``env.name``), ``{}`` for a suite without published numbers."""
    return dict(PUBLISHED.get(suite, {}))
