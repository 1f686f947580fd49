"""DeFlow in your own TorchRL loop: replay buffer → DeFlowLoss → Adam → SoftUpdate → act."""
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow

torch.manual_seed(0)
N, obs_dim, act_dim = 10_000, 8, 2
# Any offline dataset in TorchRL's layout; here a toy one where reward = -|a - 0.5|².
obs = torch.randn(N, obs_dim)
action = (torch.rand(N, act_dim) * 2 - 1).clamp(-0.999, 0.999)
data = TensorDict({
    "observation": obs,
    "action": action,
    "next": {
        "observation": obs + 0.1 * torch.randn(N, obs_dim),
        "reward": -(action - 0.5).pow(2).sum(-1, keepdim=True),
        "done": torch.zeros(N, 1, dtype=torch.bool),
        "terminated": torch.zeros(N, 1, dtype=torch.bool),
    },
}, batch_size=[N])
buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(N), batch_size=256)
buffer.extend(data)

policy, loss = make_deflow(obs_dim, act_dim, hidden_sizes=(64, 64), target_divergence=1e-2)
optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)
target_updater = SoftUpdate(loss, tau=0.005)

for step in range(200):
    out = loss(buffer.sample())
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    target_updater.step()
    if step % 50 == 0:
        print(f"step {step}: critic {out['loss_qvalue']:.3f} flow {out['loss_flow']:.3f} "
              f"divergence {out['divergence']:.4f} alpha {out['alpha']:.3f}")

# Acting: the policy reads "observation" and writes "action" (also in env.rollout / collectors).
actions = policy(TensorDict(observation=torch.randn(4, obs_dim), batch_size=[4]))["action"]
print("actions:", actions)
