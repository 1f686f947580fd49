"""OGBench environments as TorchRL envs, and the evaluation protocol (the floor above the core library).

* :mod:`deflow_trl.envs.names` — dataset/env names: file stem, env id, task, suite;
* :mod:`deflow_trl.envs.ogbench` — :func:`make_ogbench_env` (state-based single-task envs), batched envs;
* :mod:`deflow_trl.envs.pixels` — ``visual-*`` envs with frame stacking (:func:`make_pixel_env`);
* :mod:`deflow_trl.envs.evaluation` — :func:`evaluate`: the success-rate protocol, one episode seed list per run.

Needs the ``app`` extra (OGBench, MuJoCo). The names below are imported on first use, so
``deflow_trl.envs.names`` (pure Python) can be imported without MuJoCo.

Examples:
    >>> from deflow_trl.envs import parse_ogbench_name
    >>> parse_ogbench_name("cube-single-play-singletask-task1-v0").env_id
    'cube-single-singletask-task1-v0'
"""
from deflow_trl.lazy import lazy_names

_LAZY = {
    "OGBenchName": "deflow_trl.envs.names", "parse_ogbench_name": "deflow_trl.envs.names",
    "known_env_ids": "deflow_trl.envs.names",
    "make_ogbench_env": "deflow_trl.envs.ogbench", "make_batched_env": "deflow_trl.envs.ogbench",
    "singletask_env_id": "deflow_trl.envs.ogbench", "OGBenchEnv": "deflow_trl.envs.ogbench",
    "OGBenchGymEnv": "deflow_trl.envs.ogbench", "PrivateNumpyRNG": "deflow_trl.envs.ogbench",
    "SuccessReader": "deflow_trl.envs.ogbench",
    "make_pixel_env": "deflow_trl.envs.pixels", "VisualOGBenchEnv": "deflow_trl.envs.pixels",
    "evaluate": "deflow_trl.envs.evaluation", "make_eval_env": "deflow_trl.envs.evaluation",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
