"""VariBAD on BayesGrid-v0: train, then draw the decoder's reward belief over one trial (the VariBAD figure).

    python examples/varibad_grid_belief.py [--timesteps 100000] [--out varibad_grid_belief.png]

1. Meta-trains a VariBAD agent with ``BayesPPO`` on 16 batched grid envs: the policy sees
   ``[position, μ_t, log σ_t²]`` and the VAE (per-cell Bernoulli reward decoder) trains on a buffer
   of whole trials after every PPO update.
2. Evaluates it on the 21 possible goals (one trial each) against the Bayes-optimal returns.
3. Rolls out one trial with deterministic actions and saves a PNG: for every step, a 5×5 heatmap of
   the decoder's ``p(reward at cell | μ_t)``, the agent's position (dot) and the true goal (star);
   one row per inner episode. Needs matplotlib (the ``[plot]`` extra).

The default budget takes a few minutes on 2 CPU cores and shows the belief taking shape (visited
cells fade, the goal lights up once found; from ~100k steps on the decoder's probability of the goal
cell once it has been found is near 1); acting on it takes far longer (the reference VariBAD grid
configuration trains for 1e8 frames).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.callbacks import ProgressCallback
from bayes_agents.experiment import set_torch_threads
from bayes_agents.methods import method_defaults
from bayes_agents.policies import VariBADPolicy
from bayes_envs.grid import GridTask, goal_candidates
from bayes_envs.references import bayes_optimal_episode_returns

ENV_ID = "BayesGrid-v0"
SIZE = 5
#: The package's VariBAD grid defaults: VariBAD's model (latent 5, GRU 64, [32, 32] decoder with 25
#: Bernoulli heads, docs/specification.md#varibad) with a faster VAE schedule (20 updates per PPO
#: update at lr 3e-3).
VARIBAD_GRID = method_defaults(ENV_ID, "varibad")


def roll_out(model: BayesPPO, goal: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """One deterministic trial with the goal fixed: positions, rewards and per-step cell beliefs."""
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed, options={"task": GridTask(goal=goal)})
    belief = model.policy.belief
    state, start, done = None, np.array([True]), False
    positions, beliefs, rewards, inner_returns = [], [], [], []
    while not done:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        with torch.no_grad():  # the posterior after x_t, the one the action was chosen with
            mean = model.policy.last_belief_output.mean[0]
            beliefs.append(belief.reward_probabilities(mean).view(SIZE, SIZE).cpu().numpy())
        positions.append(np.asarray(obs["obs"]).astype(int))
        obs, reward, done, _, info = env.step(action)
        rewards.append(reward)
        if info["inner_done"]:
            inner_returns.append(info["inner_return"])
        start = np.array([False])
    return dict(
        positions=np.array(positions),
        beliefs=np.array(beliefs),
        rewards=np.array(rewards),
        inner_returns=np.array(inner_returns),
    )


def plot_trial(trial: dict[str, np.ndarray], goal: tuple[int, int], path: str, episode_length: int) -> None:
    """A grid of heatmaps, one per step (rows: inner episodes), of ``p(reward at cell | μ_t)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(trial["positions"])
    rows = int(np.ceil(steps / episode_length))
    figure, axes = plt.subplots(
        rows, episode_length, figsize=(1.1 * episode_length, 1.25 * rows + 0.6), squeeze=False
    )
    # The prior mass of a cell is about 1/21: a 0..1 scale would hide it, so scale to the trial's maximum.
    top = max(float(trial["beliefs"].max()), 1e-3)
    image = None
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= steps:
            axis.set_visible(False)
            continue
        # beliefs[t] is indexed [x, y]; imshow wants [row = y, column = x] with y growing upwards.
        image = axis.imshow(trial["beliefs"][index].T, origin="lower", cmap="Reds", vmin=0.0, vmax=top)
        x, y = trial["positions"][index]
        axis.plot(goal[0], goal[1], marker="*", color="gold", markersize=9, markeredgecolor="black")
        axis.plot(x, y, marker="o", color="tab:blue", markersize=6)
        axis.set_title(f"t={index}  r={trial['rewards'][index]:+.1f}", fontsize=6)
        if index % episode_length == 0:
            axis.set_ylabel(f"episode {index // episode_length + 1}", fontsize=7)
    figure.suptitle(
        "VariBAD decoder: p(reward at cell | posterior mean) per step (dot: agent, star: goal); "
        f"inner-episode returns {np.round(trial['inner_returns'], 1).tolist()}",
        fontsize=8,
    )
    figure.colorbar(image, ax=axes, fraction=0.01, pad=0.01)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal", type=int, nargs=2, default=(3, 4), metavar=("X", "Y"))
    parser.add_argument("--out", default="varibad_grid_belief.png")
    args = parser.parse_args()
    set_torch_threads()  # as bayes-rl train: $OMP_NUM_THREADS, else 1 (small networks)

    env = bayes_envs.make_vec(ENV_ID, n_envs=16, seed=args.seed)
    model = BayesPPO(
        VariBADPolicy,
        env,
        seed=args.seed,
        device="cpu",
        policy_kwargs=VARIBAD_GRID["policy"],
        **VARIBAD_GRID["ppo"],
    )
    start = time.perf_counter()
    model.learn(args.timesteps, callback=ProgressCallback(args.timesteps))
    minutes = (time.perf_counter() - start) / 60
    vae = {name: model.logger.name_to_value.get(f"vae/{name}", float("nan")) for name in ("elbo", "kl")}
    print(
        f"VariBAD on {ENV_ID}: {args.timesteps:,} env steps in {minutes:.1f} min "
        f"({args.timesteps / minutes / 60:,.0f} steps/s); last VAE ELBO {vae['elbo']:.2f}, KL {vae['kl']:.3f}"
    )

    returns = np.array(
        [roll_out(model, tuple(int(c) for c in goal))["inner_returns"] for goal in goal_candidates(SIZE)]
    )
    trial_returns = [info["r"] for info in model.ep_info_buffer]
    print(
        f"training trial return (stochastic actions, last {len(trial_returns)} trials): "
        f"{np.mean(trial_returns):.2f}"
    )
    print("return per inner episode over the 21 goals:", np.round(returns.mean(0), 2).tolist())
    print(
        "Bayes-optimal (exact):                     ", np.round(bayes_optimal_episode_returns(), 2).tolist()
    )

    goal = (int(args.goal[0]), int(args.goal[1]))
    trial = roll_out(model, goal)
    plot_trial(trial, goal, args.out, episode_length=env.get_attr("episode_length")[0])
    print(f"saved the per-step reward belief of one trial (goal {goal}) to {args.out}")


if __name__ == "__main__":
    main()
