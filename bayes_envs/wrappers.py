"""Wrappers that give any Stable-Baselines3 algorithm what a belief needs.

Recurrent belief policies (:mod:`bayes_agents.policies`) read the per-step RL² input
``x_t = [obs_t, prev_action_t, prev_reward_t, new_episode_t]`` and carry a belief state. Stock
algorithms (PPO, A2C, SAC, TD3) are memoryless, so the belief must come with the observation:

* :class:`TrialHistoryWrapper` emits a Dict observation holding the current observation and the
  last ``K`` RL² inputs of the trial (oldest first, padding masked). A features extractor
  (:mod:`bayes_agents.extractors`) runs the belief over that window from the prior, which gives
  exactly the recurrent policy's belief while the trial is at most ``K`` steps old.
  :class:`TrialHistoryVecWrapper` does the same for a whole ``VecEnv`` (the batched envs of
  :func:`bayes_envs.make_vec`).
* :class:`BeliefObservationWrapper` runs a frozen belief alongside the env and appends its policy
  features to a flat (Box) observation, for algorithms that know nothing of extractors.

Both build the RL² inputs in one place (:class:`RL2InputTracker`): they read them from the RL² Dict
observation of :mod:`bayes_envs` (``rl2_inputs=True``) or, for a plain Box observation, reconstruct
them from the actions, rewards and ``info["inner_done"]`` exactly as :class:`~bayes_envs.core.TrialBatch`
does, so that both kinds of env give identical inputs.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from bayes_envs.core import RL2_KEYS, action_feature_space, check_int

if TYPE_CHECKING:  # torch is only needed by BeliefObservationWrapper; bayes_envs does not import it.
    import torch

#: Keys of the history part of :class:`TrialHistoryWrapper`'s observation; entry ``i`` of
#: ``history_<part>`` is part ``<part>`` of the RL² input of one step.
HISTORY_KEYS = ("history_obs", "history_prev_action", "history_prev_reward", "history_new_episode")
HISTORY_MASK_KEY = "history_mask"


def _bounds_with_zero(space: spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """``space``'s bounds widened to contain 0 (padding is all zeros)."""
    low = np.minimum(np.asarray(space.low, np.float32), 0.0)
    high = np.maximum(np.asarray(space.high, np.float32), 0.0)
    return low, high


class RL2InputTracker:
    """The parts ``(obs, prev_action, prev_reward, new_episode)`` of the RL² input of one env's steps.

    :param env: a Gymnasium env whose observation is either the RL² Dict of :mod:`bayes_envs`
        (``{"obs", "prev_action", "prev_reward", "new_episode"}``, read as is) or a Box (the parts are
        then built: one-hot previous action for ``Discrete`` actions, previous reward, and a
        new-episode flag from ``info["inner_done"]`` of the previous step, 1 at reset).

    Attributes: ``state_space`` (Box of ``obs``), ``action_space`` (Box of ``prev_action``),
    ``reward_space`` (Box ``(1,)`` of ``prev_reward``) and ``input_dim`` (flat size of ``x_t``).
    """

    def __init__(self, env: gym.Env) -> None:
        space = env.observation_space
        if isinstance(space, spaces.Dict):
            missing = [key for key in RL2_KEYS if key not in space.spaces]
            if missing:
                raise ValueError(
                    f"Dict observations must have the RL² keys {RL2_KEYS}, missing {missing}; "
                    "use a bayes_envs env (rl2_inputs=True or False) or a Box observation"
                )
            if not isinstance(space["obs"], spaces.Box):
                raise TypeError(f"observation_space['obs'] must be a Box, got {space['obs']}")
            self.reads_dict = True
            self.state_space: spaces.Box = space["obs"]
            self.action_space: spaces.Box = space["prev_action"]
            self.reward_space: spaces.Box = space["prev_reward"]
        elif isinstance(space, spaces.Box):
            self.reads_dict = False
            self.state_space = space
            self.action_space = action_feature_space(env.action_space)
            batch = getattr(env.unwrapped, "batch", None)
            low, high = getattr(batch, "reward_range", (-np.inf, np.inf))
            self.reward_space = spaces.Box(
                np.float32(min(low, 0.0)), np.float32(max(high, 0.0)), (1,), np.float32
            )
        else:
            raise TypeError(
                "the env's observation_space must be a Box or the RL² Dict of bayes_envs, "
                f"got {type(space).__name__}"
            )
        self.env_action_space = env.action_space
        self.obs_dim = int(np.prod(self.state_space.shape))
        self.action_dim = int(np.prod(self.action_space.shape))
        self.input_dim = self.obs_dim + self.action_dim + 2
        #: The Box of each RL² part of one step, in the order of ``x_t``.
        self.part_spaces: dict[str, spaces.Box] = {
            "obs": self.state_space,
            "prev_action": self.action_space,
            "prev_reward": self.reward_space,
            "new_episode": spaces.Box(0.0, 1.0, (1,), np.float32),
        }

    def _action_features(self, action: Any) -> np.ndarray:
        space = self.env_action_space
        if isinstance(space, spaces.Discrete):
            features = np.zeros(int(space.n), np.float32)
            features[int(np.asarray(action).reshape(())) - int(space.start)] = 1.0
            return features
        return np.asarray(action, np.float32).reshape(self.action_space.shape)

    def reset(self, observation: Any) -> dict[str, np.ndarray]:
        """The parts of a trial's first input, from the observation ``reset()`` returned."""
        if self.reads_dict:
            return self._copy_dict(observation)
        return {
            "obs": np.asarray(observation, np.float32).copy(),
            "prev_action": np.zeros(self.action_space.shape, np.float32),
            "prev_reward": np.zeros(1, np.float32),
            "new_episode": np.ones(1, np.float32),
        }

    def step(
        self, action: Any, observation: Any, reward: SupportsFloat, trial_over: bool, info: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """The parts of the input after ``action`` led to ``observation`` and ``reward``."""
        if self.reads_dict:
            return self._copy_dict(observation)
        # As TrialBatch: the flag marks the start observation of a next inner episode, never a trial end.
        new_episode = bool(info.get("inner_done", False)) and not trial_over
        return {
            "obs": np.asarray(observation, np.float32).copy(),
            "prev_action": self._action_features(action),
            "prev_reward": np.array([reward], np.float32),
            "new_episode": np.array([float(new_episode)], np.float32),
        }

    @staticmethod
    def _copy_dict(observation: dict[str, Any]) -> dict[str, np.ndarray]:
        return {key: np.array(observation[key], np.float32) for key in RL2_KEYS}

    def flat_input(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """``x_t`` = [obs, prev_action, prev_reward, new_episode] flattened, ``[input_dim]`` float32."""
        return np.concatenate([parts[key].reshape(-1) for key in RL2_KEYS]).astype(np.float32)


def _trial_length(env: gym.Env) -> int:
    unwrapped = env.unwrapped
    try:
        return int(unwrapped.episode_length) * int(unwrapped.episodes_per_trial)  # type: ignore[attr-defined]
    except AttributeError as error:
        raise ValueError(
            "window=None (the whole trial) needs a bayes_envs env with episode_length and "
            f"episodes_per_trial; {type(unwrapped).__name__} has none, so pass window=K"
        ) from error


def history_observation_space(part_spaces: dict[str, spaces.Box], window: int) -> spaces.Dict:
    """The Dict space of :class:`TrialHistoryWrapper`'s observations for RL² parts ``part_spaces``
    (``obs``, ``prev_action``, ``prev_reward``, ``new_episode``) and ``window`` entries."""
    history_spaces = {}
    for key, space in part_spaces.items():
        low, high = _bounds_with_zero(space)
        shape = (window, *space.shape)
        history_spaces[f"history_{key}"] = spaces.Box(
            np.broadcast_to(low, shape).copy(), np.broadcast_to(high, shape).copy(), shape, np.float32
        )
    return spaces.Dict(
        {
            "obs": part_spaces["obs"],
            **history_spaces,
            HISTORY_MASK_KEY: spaces.Box(0.0, 1.0, (window,), np.float32),
        }
    )


class TrialHistory:
    """A rolling window of the last ``window`` RL² inputs of ``batch_size`` trials (numpy, batched).

    Row ``b`` holds the inputs of its trial's last ``n_b = min(steps, window)`` steps, oldest first,
    in entries ``0 .. n_b - 1``; the other entries are zeros. One implementation serves the
    single-env :class:`TrialHistoryWrapper` and batched callers (e.g.
    :class:`~bayes_agents.extractors.HistoryPredictor`).

    :param batch_size: number of trials ``B``.
    :param window: ``K``.
    :param part_shapes: the shape of each RL² part (``obs``, ``prev_action``, ``prev_reward``,
        ``new_episode``) of one step.
    """

    def __init__(self, batch_size: int, window: int, part_shapes: dict[str, tuple[int, ...]]) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.window = check_int("window", window, 1)
        if set(part_shapes) != set(RL2_KEYS):
            raise ValueError(f"part_shapes must have exactly the keys {RL2_KEYS}, got {sorted(part_shapes)}")
        self.values = {
            f"history_{key}": np.zeros((batch_size, window, *part_shapes[key]), np.float32)
            for key in RL2_KEYS
        }
        self.lengths = np.zeros(batch_size, np.int64)

    def append(self, parts: dict[str, np.ndarray], restart: np.ndarray | None = None) -> None:
        """Append one step's inputs ``parts[key]`` ``[B, *shape]`` to every row.

        :param restart: ``[B]`` bool; those rows are cleared first (their trial starts with this input).
        """
        if restart is not None:
            restart = np.asarray(restart, bool).reshape(self.batch_size)
            for values in self.values.values():
                values[restart] = 0.0
            self.lengths[restart] = 0
        full = self.lengths == self.window
        if full.any():
            for values in self.values.values():
                values[full] = np.roll(values[full], -1, axis=1)  # drop the oldest entry
        index = np.minimum(self.lengths, self.window - 1)
        rows = np.arange(self.batch_size)
        for key in RL2_KEYS:
            values = self.values[f"history_{key}"]
            values[rows, index] = np.asarray(parts[key], np.float32).reshape(
                self.batch_size, *values.shape[2:]
            )
        self.lengths = np.minimum(self.lengths + 1, self.window)

    def subset(self, rows: np.ndarray) -> TrialHistory:
        """A copy of the histories of ``rows`` (an index array) as a batch of their own."""
        rows = np.asarray(rows, np.int64)
        shapes = {key: values.shape[2:] for key, values in self.values.items()}
        copied = TrialHistory(
            len(rows), self.window, {key[len("history_") :]: shape for key, shape in shapes.items()}
        )
        copied.values = {key: values[rows].copy() for key, values in self.values.items()}
        copied.lengths = self.lengths[rows].copy()
        return copied

    def observation(self, current_obs: np.ndarray) -> dict[str, np.ndarray]:
        """The Dict observation ``{"obs", "history_*", "history_mask"}`` (fresh arrays, leading dim ``B``)."""
        mask = (np.arange(self.window)[None, :] < self.lengths[:, None]).astype(np.float32)
        return {
            "obs": np.array(current_obs, np.float32),
            **{key: values.copy() for key, values in self.values.items()},
            HISTORY_MASK_KEY: mask,
        }


class TrialHistoryWrapper(gym.Wrapper):
    """Dict observation: the current observation and the last ``window`` RL² inputs of the trial.

    Keys (``K = window``, ``O`` the observation shape, ``A`` the action-feature size):

    * ``"obs"`` ``[*O]``: the current observation (the env's plain state);
    * ``"history_obs"`` ``[K, *O]``, ``"history_prev_action"`` ``[K, A]``, ``"history_prev_reward"``
      ``[K, 1]``, ``"history_new_episode"`` ``[K, 1]``: the RL² inputs of the last ``n = min(t + 1, K)``
      steps ``t-n+1 .. t`` of the trial, oldest first, the current step last among them; entries
      ``n .. K-1`` are zero padding;
    * ``"history_mask"`` ``[K]``: 1 for the ``n`` valid entries, 0 for padding.

    Entry ``i`` is the input of one step: the observation ``s_i`` reached, the action ``a_{i-1}`` and
    reward ``r_{i-1}`` that led to it, and whether ``s_i`` is the start of a new inner episode (then
    ``s_i`` is a reset state, not the successor of ``s_{i-1}``). With ``s_{i-1}`` from entry ``i - 1``
    the entries are the trial's transitions ``(s, a, r, s')``; the first entry of a trial has a zero
    action and reward and a set new-episode flag. These are exactly the inputs a recurrent belief
    policy sees, so running a belief over the valid entries from its prior state reproduces its
    belief at every step of the first ``K`` of a trial (later: the belief of the last ``K`` steps).

    The history is cleared at ``reset()`` (a trial start: one Gymnasium episode is one trial).
    SB3's ``check_env`` warns that the ``[K, D]`` entries are not 1-D: expected, the extractors read
    them as sequences. With ``VecNormalize`` leave ``history_mask`` out of ``norm_obs_keys``.

    :param env: a Gymnasium env with the RL² Dict observation of :mod:`bayes_envs` or a Box
        observation (see :class:`RL2InputTracker`).
    :param window: ``K >= 1``; ``None`` takes the trial length of a :mod:`bayes_envs` env (exact
        beliefs over the whole trial). The observation grows with ``K``: mind replay-buffer sizes.
    """

    def __init__(self, env: gym.Env, window: int | None = None) -> None:
        super().__init__(env)
        self.window = _trial_length(env) if window is None else check_int("window", window, 1)
        self.tracker = RL2InputTracker(env)
        self.observation_space = history_observation_space(self.tracker.part_spaces, self.window)
        self.history = TrialHistory(
            1, self.window, {key: space.shape for key, space in self.tracker.part_spaces.items()}
        )
        self._current_obs = np.zeros(self.tracker.state_space.shape, np.float32)

    @property
    def length(self) -> int:
        """Number of valid history entries."""
        return int(self.history.lengths[0])

    def _append(self, parts: dict[str, np.ndarray], restart: bool) -> None:
        self.history.append({key: value[None] for key, value in parts.items()}, np.array([restart]))
        self._current_obs = parts["obs"]

    def observation(self) -> dict[str, np.ndarray]:
        """The current Dict observation (fresh arrays)."""
        return {key: value[0] for key, value in self.history.observation(self._current_obs[None]).items()}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self._append(self.tracker.reset(observation), restart=True)
        return self.observation(), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._append(
            self.tracker.step(action, observation, reward, terminated or truncated, info), restart=False
        )
        return self.observation(), reward, terminated, truncated, info


class TrialHistoryVecWrapper(VecEnvWrapper):
    """:class:`TrialHistoryWrapper` for a whole ``VecEnv`` at once: the same Dict observations, kept
    in one batched :class:`TrialHistory`, so that stock SB3 algorithms with belief extractors run on
    the batched envs of :func:`bayes_envs.make_vec` (e.g. 16 grid trials stepped as one numpy batch
    instead of 16 wrapped Python envs)::

        env = TrialHistoryVecWrapper(bayes_envs.make_vec("BayesGrid-v0", 16))
        PPO("MultiInputPolicy", env, policy_kwargs=dict(features_extractor_class=LaplaceExtractor))

    The history of an env restarts with the observation that starts its next trial (the ``VecEnv``
    resets finished envs itself), and ``info["terminal_observation"]`` of a finished env is turned
    into the history observation of its trial's last step, as a ``DummyVecEnv`` of
    :class:`TrialHistoryWrapper` envs gives it.

    :param venv: a ``VecEnv`` with the RL² Dict observation of :mod:`bayes_envs` (``rl2_inputs=True``,
        the default of :func:`bayes_envs.make_vec`).
    :param window: ``K >= 1``; ``None`` takes the trial length of the envs (``episode_length ×
        episodes_per_trial``).
    """

    def __init__(self, venv: VecEnv, window: int | None = None) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or any(key not in space.spaces for key in RL2_KEYS):
            raise TypeError(
                f"venv must have the RL² Dict observation of bayes_envs (keys {RL2_KEYS}), got {space}; "
                "make it with bayes_envs.make_vec(env_id, n, rl2_inputs=True)"
            )
        if window is None:
            try:
                length = venv.get_attr("episode_length", [0])[0] * venv.get_attr("episodes_per_trial", [0])[0]
            except AttributeError as error:
                raise ValueError(
                    "window=None (the whole trial) needs envs with episode_length and episodes_per_trial; "
                    "pass window=K"
                ) from error
            window = int(length)
        self.window = check_int("window", window, 1)
        self.part_spaces = {key: space[key] for key in RL2_KEYS}
        super().__init__(venv, observation_space=history_observation_space(self.part_spaces, self.window))
        self.history = self._empty_history()

    def _empty_history(self) -> TrialHistory:
        return TrialHistory(
            self.num_envs, self.window, {key: box.shape for key, box in self.part_spaces.items()}
        )

    def reset(self) -> dict[str, np.ndarray]:
        observation = self.venv.reset()
        self.history = self._empty_history()
        self.history.append(observation, np.ones(self.num_envs, bool))
        return self.history.observation(observation["obs"])

    def step_wait(self) -> VecEnvStepReturn:
        observation, rewards, dones, infos = self.venv.step_wait()
        finished = np.flatnonzero(dones)
        if finished.size:
            last = [infos[i]["terminal_observation"] for i in finished]
            ended = self.history.subset(finished)
            ended.append({key: np.stack([obs[key] for obs in last]) for key in RL2_KEYS})
            terminal = ended.observation(np.stack([obs["obs"] for obs in last]))
            for row, i in enumerate(finished):
                infos[i]["terminal_observation"] = {key: value[row] for key, value in terminal.items()}
        self.history.append(observation, dones)
        return self.history.observation(observation["obs"]), rewards, dones, infos


class BeliefObservationWrapper(gym.Wrapper):
    """Runs a frozen belief alongside ``env`` and appends its policy features to the observation.

    The observation becomes the Box ``[obs, belief.policy_input(q_t)]`` (``obs`` the env's plain
    state, flattened) or, with ``keep_rl2_inputs=True``, ``[x_t, belief.policy_input(q_t)]`` with the
    whole RL² input ``x_t``. The belief state is reset at ``reset()`` (a trial start) and advanced
    by one :meth:`~bayes_agents.beliefs.Belief.step` per env step, so the features are exactly
    those the recurrent policy's belief would compute on the same trial. The last
    :class:`~bayes_agents.beliefs.BeliefOutput` (posterior mean, precision, entropy, ...) is kept in
    :attr:`last_belief_output`.

    :param env: a Gymnasium env with the RL² Dict observation or a Box observation (see
        :class:`RL2InputTracker`).
    :param belief: a trained (or post-hoc Laplace) :class:`~bayes_agents.beliefs.Belief` whose
        ``input_dim`` equals the size of ``x_t``; a frozen copy (no gradients, eval mode) is used.
    :param keep_rl2_inputs: put the whole ``x_t`` in the observation instead of the plain state.
    :param device: where to run the belief (default: the belief's device).
    """

    def __init__(
        self,
        env: gym.Env,
        belief: torch.nn.Module,
        keep_rl2_inputs: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        import torch

        super().__init__(env)
        self.tracker = RL2InputTracker(env)
        for name in ("input_dim", "initial_state", "step", "policy_input", "policy_input_dim"):
            if not hasattr(belief, name):
                raise TypeError(
                    f"belief must be a bayes_agents Belief (no {name!r}), got {type(belief).__name__}"
                )
        if belief.input_dim != self.tracker.input_dim:
            raise ValueError(
                f"belief.input_dim must equal the size of the env's RL² input ({self.tracker.input_dim}: obs "
                f"{self.tracker.obs_dim} + action {self.tracker.action_dim} + reward + new-episode flag), "
                f"got {belief.input_dim}"
            )
        reference = next(belief.parameters())
        self.device = torch.device(reference.device if device is None else device)
        self.belief = copy.deepcopy(belief).to(self.device).eval().requires_grad_(False)
        self.keep_rl2_inputs = bool(keep_rl2_inputs)
        self.belief_dim = int(belief.policy_input_dim)
        part_spaces = (
            list(self.tracker.part_spaces.values()) if keep_rl2_inputs else [self.tracker.state_space]
        )
        low = np.concatenate([np.asarray(space.low, np.float32).reshape(-1) for space in part_spaces])
        high = np.concatenate([np.asarray(space.high, np.float32).reshape(-1) for space in part_spaces])
        low = np.concatenate([low, np.full(self.belief_dim, -np.inf, np.float32)])
        high = np.concatenate([high, np.full(self.belief_dim, np.inf, np.float32)])
        self.observation_space = spaces.Box(low, high, low.shape, np.float32)
        self._state = self.belief.initial_state(1, device=self.device)
        self.last_belief_output: Any = None

    def _advance(self, parts: dict[str, np.ndarray], trial_start: bool) -> np.ndarray:
        import torch

        flat_input = self.tracker.flat_input(parts)
        inputs = torch.as_tensor(flat_input, device=self.device)[None]
        start = torch.tensor([trial_start], device=self.device)
        with torch.no_grad():
            output, self._state = self.belief.step(inputs, self._state, start)
            features = self.belief.policy_input(output)[0].cpu().numpy().astype(np.float32)
        self.last_belief_output = output
        visible = flat_input if self.keep_rl2_inputs else parts["obs"].reshape(-1)
        return np.concatenate([visible, features]).astype(np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return self._advance(self.tracker.reset(observation), trial_start=True), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        parts = self.tracker.step(action, observation, reward, terminated or truncated, info)
        return self._advance(parts, trial_start=False), reward, terminated, truncated, info
