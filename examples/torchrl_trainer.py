"""DeFlowLoss inside torchrl.trainers.Trainer: offline data first, then online collection."""
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import GymEnv
from torchrl.objectives import SoftUpdate
from torchrl.trainers import ReplayBufferTrainer, TargetNetUpdaterHook, Trainer

from deflow_trl import make_deflow

torch.manual_seed(0)
env = GymEnv("Pendulum-v1")  # 3-d observation, 1-d action in [-2, 2]
obs_dim = env.observation_spec["observation"].shape[-1]
act_dim = env.action_spec.shape[-1]
# The policy works in [-1, 1] and maps to the spec's bounds; the loss maps dataset actions back.
policy, loss = make_deflow(obs_dim, act_dim, hidden_sizes=(64, 64), num_flow_steps=4, action_spec=env.action_spec)
loss.make_value_estimator(gamma=0.99)  # TorchRL's usual call (TD(0) by default)

# The buffer starts with an offline dataset (here: 1000 uniform-random steps, in the env's units).
buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(10_000))
offline = env.rollout(1000, lambda td: td.set("action", env.action_spec.rand()), break_when_any_done=False)
buffer.extend(offline.reshape(-1))

collector = Collector(env, policy, frames_per_batch=50, total_frames=200)
trainer = Trainer(
    collector=collector, total_frames=200, frame_skip=1, optim_steps_per_batch=5,
    loss_module=loss, optimizer=torch.optim.Adam(loss.parameters(), lr=3e-4),
    progress_bar=False, log_interval=50,
)
trainer.register_op("batch_process", lambda batch: batch.exclude("collector"))  # keep the dataset's keys
ReplayBufferTrainer(buffer, batch_size=128).register(trainer)  # collected data joins the buffer
TargetNetUpdaterHook(SoftUpdate(loss, tau=0.005)).register(trainer, "target_net_updater")
trainer.train()
print("buffer size after training:", len(buffer))
