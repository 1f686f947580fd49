"""Print a dataset's intrinsic action variance (IAV) and the trust-region size δ it proposes.

IAV is the mean variance of the actions of each state's k nearest neighbour states,
per action dimension (:func:`deflow_trl.iav.intrinsic_action_variance`); δ follows
from it per suite (:func:`deflow_trl.iav.propose_delta`). Actions are the loader's
(clipped to ±(1 − 1e-5)), so the number matches what training sees.

Command line::

    python -m deflow_trl.data.iav_cli --dataset cube-single-play-v0
    python -m deflow_trl.data.iav_cli --dataset puzzle-3x3-play-v0 --dataset-dir /tmp/og --max-queries 5000

Examples:
    >>> import tempfile
    >>> from deflow_trl.data import generate_dataset
    >>> from deflow_trl.data.iav_cli import dataset_iav
    >>> d = tempfile.mkdtemp()
    >>> _ = generate_dataset("cube-single-play-v0", 2, episode_length=30, dataset_dir=d, progress=False)
    >>> out = dataset_iav("cube-single-play-v0", dataset_dir=d)
    >>> sorted(out)
    ['dataset', 'delta', 'iav', 'iav_stderr', 'k', 'num_queries', 'num_transitions', 'suite']
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m deflow_trl.data.iav_cli` without the app extra: one line, not a traceback
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.data.iav_cli")

import argparse
import json

from deflow_trl.data.ogbench import load_ogbench_dataset
from deflow_trl.envs.names import parse_ogbench_name
from deflow_trl.iav import intrinsic_action_variance, propose_delta

__all__ = ["dataset_iav", "main"]


def dataset_iav(
    name: str, dataset_dir: str | None = None, *, k: int = 5, max_queries: int | None = 20_000, seed: int = 0,
    dataset_path: str | None = None,
) -> dict:
    """IAV and proposed δ of dataset ``name`` (train split); see the module docstring."""

    parsed = parse_ogbench_name(name)
    td = load_ogbench_dataset(name, dataset_dir, dataset_path=dataset_path)
    iav, stderr = intrinsic_action_variance(
        td["observation"], td["action"], k=k, max_queries=max_queries, seed=seed, return_stderr=True
    )
    n = td.shape[0]
    return {
        "dataset": name,
        "suite": parsed.suite,
        "num_transitions": n,
        "num_queries": n if max_queries is None else min(n, max_queries),
        "k": k,
        "iav": iav,
        "iav_stderr": stderr,
        "delta": propose_delta(iav, parsed.file_stem),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deflow_trl.data.iav_cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset name, e.g. cube-single-play-v0")
    p.add_argument("--dataset-dir", default=None, help="default ~/.ogbench/data")
    p.add_argument("--k", type=int, default=5, help="neighbourhood size (the state itself included)")
    p.add_argument("--max-queries", type=int, default=20_000, help="query states sampled; 0 = all (exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    a = p.parse_args(argv)
    out = dataset_iav(a.dataset, a.dataset_dir, k=a.k, max_queries=a.max_queries or None, seed=a.seed)
    if a.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['dataset']}: {out['num_transitions']} transitions, k={out['k']}, {out['num_queries']} queries\n"
            f"IAV = {out['iav']:.4g} ± {out['iav_stderr']:.2g}\n"
            f"proposed delta ({out['suite']}) = {out['delta']:.3g}"
        )


if __name__ == "__main__":
    main()
