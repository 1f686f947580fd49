"""DeFlow and FQL from pixels: an encoder per network, gradients routed exactly, bad frames refused."""
import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow, make_fql

SHAPE, ACT, B = (64, 64, 9), 3, 4


def pixel_batch(n=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)  # noqa: E731
    return TensorDict({"observation": frames(), "action": torch.rand(n, ACT, generator=g) * 2 - 1,
                       "next": {"observation": frames(), "reward": torch.randn(n, 1, generator=g),
                                "done": torch.zeros(n, 1, dtype=torch.bool),
                                "terminated": torch.zeros(n, 1, dtype=torch.bool)}}, [n])


@pytest.fixture(scope="module")
def pixel_deflow():
    torch.manual_seed(0)
    return make_deflow(SHAPE, ACT, hidden_sizes=(32,), num_flow_steps=2, encoder="impala_small")


def test_one_encoder_per_network(pixel_deflow):
    policy, loss = pixel_deflow
    encoders = [policy.velocity.encoder, policy.refiner.encoder, loss.critic.encoder]
    assert len({id(e) for e in encoders}) == 3
    assert policy.observation_shape == SHAPE and policy.observation_dim == policy.velocity.encoder.out_features


@pytest.mark.parametrize("key,owner", [("loss_qvalue", "critic"), ("loss_flow", "velocity"), ("loss_actor", "refiner")])
def test_pixel_gradients_reach_only_their_own_encoder(pixel_deflow, key, owner):
    policy, loss = pixel_deflow
    loss.zero_grad(set_to_none=True)
    loss(pixel_batch())[key].backward()
    encoders = {"velocity": policy.velocity.encoder, "refiner": policy.refiner.encoder}
    grads = {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
             for name, enc in encoders.items()}
    critic_encoder = [v for k, v in loss.critic_params.items(True, True) if k[0] == "encoder"]
    grads["critic"] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic_encoder)
    assert {name for name, has in grads.items() if has} == {owner}


def test_pixel_policy_acts_and_trains_a_few_steps():
    torch.manual_seed(0)
    for make in (make_deflow, make_fql):
        policy, loss = make(SHAPE, ACT, hidden_sizes=(32,), num_flow_steps=2, encoder="impala_small")
        opt = torch.optim.Adam(loss.parameters(), lr=3e-4)
        up = SoftUpdate(loss, tau=0.005)
        for step in range(3):
            out = loss(pixel_batch(seed=step))
            total = sum(out[k] for k in out.keys() if k.startswith("loss_"))
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            up.step()
        action = policy(TensorDict(observation=pixel_batch(2)["observation"], batch_size=[2]))["action"]
        assert action.shape == (2, ACT) and action.abs().max() <= 1


def test_bad_frames_are_one_clear_error(pixel_deflow):
    policy, loss = pixel_deflow
    with pytest.raises(ValueError, match=r"expected \[\*batch, 64, 64, 9\]"):
        policy.act(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))  # a stack of 1 where 3 is configured
    bad = pixel_batch()
    bad["observation"] = bad["observation"][:, :32]  # wrong frame size
    with pytest.raises(ValueError, match="observation must have shape"):
        loss(bad)
    with pytest.raises(ValueError, match="observation shape"):
        make_deflow(28, ACT, encoder="impala_small")  # a state dataset given a pixel encoder
