"""A/B timing of one eager DeFlow update at the reference sizes, for the deflow_trl checkout given.

Run it alternately on two checkouts (e.g. a ``git worktree`` of an older commit and this tree) so
that the machine's load hits both alike, and compare the medians:

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do for v in /tmp/before .; do python benchmarks/ab_update.py $v 6; done; done

Prints one JSON line per call: the checkout, the deflow_trl file actually imported (to be sure
the checkout, not the installed copy, was timed) and the per-update times in ms.
"""
import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.objectives import SoftUpdate  # noqa: E402

import deflow_trl  # noqa: E402
from deflow_trl import make_deflow  # noqa: E402
from deflow_trl.update import make_update  # noqa: E402

torch.manual_seed(0)
_, loss = make_deflow(28, 5)  # reference sizes: 4x512, K = 10, 2 critics
optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)
update = make_update(loss, optimizer, SoftUpdate(loss, tau=0.005))
B = 256
g = torch.Generator().manual_seed(0)
batch = TensorDict({"observation": torch.randn(B, 28, generator=g), "action": torch.rand(B, 5, generator=g) * 2 - 1,
                    "next": {"observation": torch.randn(B, 28, generator=g), "reward": torch.randn(B, 1, generator=g),
                             "done": torch.zeros(B, 1, dtype=torch.bool),
                             "terminated": torch.zeros(B, 1, dtype=torch.bool)}}, [B])
for _ in range(3):  # warm-up
    update(batch.clone())
times = []
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
    t0 = time.perf_counter()
    update(batch.clone())
    times.append(time.perf_counter() - t0)
print(json.dumps({"checkout": sys.argv[1], "file": deflow_trl.__file__, "threads": torch.get_num_threads(),
                  "times_ms": [round(1000 * t, 2) for t in times]}))
