"""SB3Policy: a stable-baselines3 PPO agent choosing among a proposer's K candidate edits.

The agent sees the env through :mod:`envs.sb3`: a numeric feature vector of the prompt
(:class:`~envs.sb3.Featurizer`) and ``Discrete(k)`` actions over the proposer's candidates,
masked to the slots that hold one. It learns in two ways:

* **Through the common protocol** (what the runner and ``compare`` use): ``act`` runs the
  network on the observation's features and returns the chosen candidate as an env action;
  ``update`` stores the step in the algorithm's rollout buffer, and every ``n_steps`` steps
  runs the algorithm's own ``train()`` (the PPO update) on it — the same loop SB3's
  ``collect_rollouts`` + ``train`` performs, driven by the runner's steps instead of a
  ``VecEnv``, so every model call counts against the run's budget. A truncated episode
  bootstraps with the value of its last observation, as SB3 does.
* **With SB3's own loop**: :meth:`SB3Policy.learn` wraps an env with
  :func:`envs.sb3.make_sb3_env` and SB3's ``Monitor`` and calls ``model.learn``.

``algo="auto"`` picks sb3-contrib's ``MaskablePPO`` when it is installed, else ``PPO`` (an
unmasked agent's empty-slot choices are no-change steps). Logs: with ``log_dir`` set, SB3's
logger writes ``progress.csv`` (and TensorBoard event files when ``tensorboard=True`` and
the package is installed; otherwise it warns and skips them), and finished episodes are
written to ``monitor.csv`` in SB3's Monitor format (readable by
``stable_baselines3.common.monitor.load_results``). Torch runs on one thread (small nets
are 8-20x faster that way on 2 cores).

State: ``state_dict`` carries the network and optimizer (base64 of ``torch.save``, refreshed
after each update) and the proposer's memory; a partly collected rollout is not saved, so a resumed
run starts a fresh one.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from envs.sb3 import Featurizer, make_sb3_env
from policies.base import BasePolicy, Observation, Transition
from policies.catalog import make_proposer
from policies.proposers import Candidate, no_change_candidate, proposer_report
from selfimprove_rl.errors import PolicyError

Algo = Literal["auto", "ppo", "maskable_ppo"]


def maskable_available() -> bool:
    """Whether sb3-contrib (MaskablePPO) is installed."""
    return importlib.util.find_spec("sb3_contrib") is not None


def tensorboard_available() -> bool:
    """Whether the tensorboard package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class SB3Policy(BasePolicy):
    """PPO (or MaskablePPO) over K proposer candidates, acting through the policy protocol.

    Args:
        seed: seeds torch, NumPy and the proposer.
        algo: ``"auto"`` (MaskablePPO if installed), ``"ppo"`` or ``"maskable_ppo"``.
        proposer: proposer name, ``module:Class`` or instance (default: rule induction).
        proposer_kwargs: proposer constructor keyword arguments.
        k: candidate slots.
        hash_dim: bag-of-words buckets of the features.
        models: models the features one-hot (default: the first observed model).
        online: learn from the runner's steps (``False``: act with the current network only).
        n_steps: steps per rollout (one PPO update per rollout).
        batch_size: minibatch size of the PPO update (must divide ``n_steps`` ideally).
        n_epochs: passes over a rollout per update.
        learning_rate: Adam step size.
        gamma: discount.
        gae_lambda: GAE lambda.
        ent_coef: entropy bonus (exploration among candidates).
        net_arch: hidden layer sizes of the policy and value networks.
        log_dir: folder for ``progress.csv``, ``monitor.csv`` and TensorBoard files.
        tensorboard: also write TensorBoard files (needs the tensorboard package).
        deterministic: act greedily instead of sampling.

    Example:
        >>> policy = SB3Policy(seed=0, proposer="operators", k=3)
        >>> policy.algo in ("ppo", "maskable_ppo"), policy.k
        (True, 3)
    """

    name = "sb3"

    def __init__(
        self,
        seed: int | None = None,
        *,
        algo: Algo = "auto",
        proposer: Any = None,
        proposer_kwargs: dict[str, Any] | None = None,
        k: int = 4,
        hash_dim: int = 64,
        models: list[str] | None = None,
        online: bool = True,
        n_steps: int = 16,
        batch_size: int = 8,
        n_epochs: int = 4,
        learning_rate: float = 3e-4,
        gamma: float = 0.9,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.01,
        net_arch: list[int] | None = None,
        log_dir: str | None = None,
        tensorboard: bool = False,
        deterministic: bool = False,
    ) -> None:
        super().__init__(seed)
        if algo not in ("auto", "ppo", "maskable_ppo"):
            raise PolicyError(f"Expects algo 'auto', 'ppo' or 'maskable_ppo', got {algo!r}.")
        if algo == "maskable_ppo" and not maskable_available():
            raise PolicyError(
                "algo='maskable_ppo' needs sb3-contrib; install it (pip install sb3-contrib) "
                "or use algo='ppo'."
            )
        if k < 1 or n_steps < 2 or batch_size < 1:
            raise PolicyError(
                f"Expects k >= 1, n_steps >= 2 and batch_size >= 1, got {k}, {n_steps}, "
                f"{batch_size}."
            )
        self.algo = "maskable_ppo" if algo == "auto" and maskable_available() else algo
        if self.algo == "auto":
            self.algo = "ppo"
        self.proposer = make_proposer(
            proposer, seed=int(self.rng.integers(2**31)), kwargs=proposer_kwargs
        )
        self.k = k
        self.hash_dim = hash_dim
        self.models = list(models or [])
        self.online = online
        self.hyper = {
            "n_steps": n_steps,
            "batch_size": batch_size,
            "n_epochs": n_epochs,
            "learning_rate": learning_rate,
            "gamma": gamma,
            "gae_lambda": gae_lambda,
            "ent_coef": ent_coef,
        }
        self.net_arch = list(net_arch or [64, 64])
        self.log_dir = Path(log_dir) if log_dir else None
        self.tensorboard = tensorboard
        self.deterministic = deterministic
        self.model: Any = None
        self.featurizer: Featurizer | None = None
        self.candidates: list[Candidate] = []
        self._pending: dict[str, Any] | None = None
        self._episode_start = True
        self._episode_reward = 0.0
        self._episode_length = 0
        self._started = time.monotonic()
        self._monitor: Any = None
        self._weights: str | None = None
        self.updates = 0

    # ------------------------------------------------------------------ model
    def _algorithm_class(self) -> Any:
        if self.algo == "maskable_ppo":
            from sb3_contrib import MaskablePPO

            return MaskablePPO
        from stable_baselines3 import PPO

        return PPO

    def _configure_logger(self) -> Any:
        from stable_baselines3.common.logger import configure

        if self.log_dir is None:
            return configure(None, [])
        formats = ["csv"]
        if self.tensorboard:
            if tensorboard_available():
                formats.append("tensorboard")
            else:
                warnings.warn(
                    "tensorboard=True but the tensorboard package is not installed; writing "
                    "progress.csv only. Install it with: pip install tensorboard",
                    stacklevel=3,
                )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return configure(str(self.log_dir), formats)

    def build(self, featurizer: Featurizer, env: Any = None) -> Any:
        """Create the algorithm for these features (with ``env`` for SB3's own loop)."""
        import torch
        from gymnasium import spaces

        torch.set_num_threads(1)
        self.featurizer = featurizer
        algorithm = self._algorithm_class()
        model = algorithm(
            "MlpPolicy",
            env,
            seed=self.seed,
            device="cpu",
            policy_kwargs={"net_arch": list(self.net_arch)},
            verbose=0,
            _init_setup_model=False,
            **self.hyper,
        )
        if env is None:
            model.observation_space = featurizer.space
            model.action_space = spaces.Discrete(self.k)
            model.n_envs = 1
        model._setup_model()
        model.set_logger(self._configure_logger())
        model.policy.set_training_mode(False)
        self.model = model
        return model

    # ------------------------------------------------------------------ SB3's own loop
    def learn(self, env: Any, total_timesteps: int, callback: Any = None) -> Any:
        """Train with SB3's ``learn`` on ``env`` wrapped by :func:`envs.sb3.make_sb3_env`.

        The wrapped env is also wrapped in SB3's ``Monitor`` (``monitor.csv`` in ``log_dir``
        when set). The network is created here if the policy has none yet.

        Args:
            env: a PromptEnv (or a Gymnasium wrapper of one).
            total_timesteps: env steps to train for.
            callback: an SB3 callback.

        Returns:
            The trained SB3 model.
        """
        from stable_baselines3.common.monitor import Monitor

        wrapped = make_sb3_env(env, self.proposer, k=self.k, hash_dim=self.hash_dim)
        monitor_path = str(self.log_dir / "monitor.csv") if self.log_dir else None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        monitored = Monitor(wrapped, filename=monitor_path)
        if self.model is None:
            self.build(wrapped.featurizer, env=monitored)
        else:
            self.model.set_env(monitored)
        self.model.learn(
            total_timesteps=total_timesteps, callback=callback, reset_num_timesteps=False
        )
        self.model.policy.set_training_mode(False)
        self._weights = None
        return self.model

    # ------------------------------------------------------------------ protocol
    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Build the network on the first observation; mark an episode start."""
        if self.model is None:
            self.build(
                Featurizer.for_observation(dict(observation), self.models, hash_dim=self.hash_dim)
            )
        self._episode_start = True
        self._episode_reward = 0.0
        self._episode_length = 0
        self._pending = None

    def action_masks(self) -> np.ndarray:
        """Return which of the ``k`` slots hold a candidate (slot 0 always valid)."""
        mask = np.zeros(self.k, dtype=bool)
        mask[: max(1, len(self.candidates))] = True
        return mask

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Propose ``k`` candidates, let the network pick a slot, return that candidate."""
        import torch
        from stable_baselines3.common.utils import obs_as_tensor

        if self.model is None or self.featurizer is None:
            self.reset(observation, info)
        assert self.model is not None and self.featurizer is not None
        base = str(info.get("current_version_id") or observation.get("version") or "") or None
        proposed = self.proposer.propose(observation, info, self.k)
        self.candidates = [c for c in proposed if not c.is_no_change()][: self.k]
        features = self.featurizer(dict(observation))
        masks = self.action_masks()
        with torch.no_grad():
            tensor = obs_as_tensor(features[None, :], self.model.device)
            if self.algo == "maskable_ppo":
                action, value, log_prob = self.model.policy(
                    tensor, deterministic=self.deterministic, action_masks=masks[None, :]
                )
            else:
                action, value, log_prob = self.model.policy(
                    tensor, deterministic=self.deterministic
                )
        index = int(action.cpu().numpy().reshape(-1)[0])
        candidate = (
            self.candidates[index]
            if index < len(self.candidates)
            else no_change_candidate(self.name, "The agent chose an empty slot.")
        )
        self._pending = {
            "features": features,
            "action": index,
            "value": value,
            "log_prob": log_prob,
            "masks": masks,
            "candidate": candidate,
        }
        return candidate.to_action(base_version=base)

    def update(self, transition: Transition) -> None:
        """Store the step; run a PPO update when the rollout is full; tell the proposer."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        info = transition.info
        reward = float(transition.reward)
        candidate: Candidate = pending["candidate"]
        feedback = getattr(self.proposer, "feedback", None)
        if candidate.proposer != self.name and callable(feedback):
            feedback(candidate, reward, bool(info.get("accepted")), info)
        done = bool(transition.terminated or transition.truncated)
        self._episode_reward += reward
        self._episode_length += 1
        if done:
            self._write_monitor()
        if self.online:
            self._store(pending, transition, reward, done)
        self._episode_start = done

    def _store(
        self, pending: dict[str, Any], transition: Transition, reward: float, done: bool
    ) -> None:
        import torch
        from stable_baselines3.common.utils import obs_as_tensor

        assert self.model is not None and self.featurizer is not None
        model = self.model
        next_features = self.featurizer(dict(transition.next_observation))
        if transition.truncated and not transition.terminated:
            # As SB3 does on a time limit: bootstrap from the value of the last observation.
            with torch.no_grad():
                tail = model.policy.predict_values(
                    obs_as_tensor(next_features[None, :], model.device)
                )
            reward += model.gamma * float(tail.cpu().numpy().reshape(-1)[0])
        buffer = model.rollout_buffer
        extra = {"action_masks": pending["masks"][None, :]} if self.algo == "maskable_ppo" else {}
        buffer.add(
            pending["features"][None, :],
            np.array([[pending["action"]]]),
            np.array([reward], dtype=np.float32),
            np.array([self._episode_start]),
            pending["value"],
            pending["log_prob"],
            **extra,
        )
        model.num_timesteps += 1
        if not buffer.full:
            return
        with torch.no_grad():
            last = model.policy.predict_values(obs_as_tensor(next_features[None, :], model.device))
        buffer.compute_returns_and_advantage(last_values=last, dones=np.array([done]))
        model.train()
        model.policy.set_training_mode(False)
        model.logger.record("time/total_timesteps", model.num_timesteps)
        model.logger.dump(step=model.num_timesteps)
        buffer.reset()
        self.updates += 1
        self._weights = None

    def _write_monitor(self) -> None:
        if self.log_dir is None:
            return
        if self._monitor is None:
            from stable_baselines3.common.monitor import ResultsWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._monitor = ResultsWriter(
                str(self.log_dir / "monitor.csv"),
                header={"t_start": time.time(), "env_id": "selfimprove_rl runner steps"},
            )
        self._monitor.write_row(
            {
                "r": round(self._episode_reward, 6),
                "l": self._episode_length,
                "t": round(time.monotonic() - self._started, 6),
            }
        )
        self._episode_reward, self._episode_length = 0.0, 0

    # ------------------------------------------------------------------ state
    def _encoded_weights(self) -> str | None:
        if self.model is None:
            return None
        if self._weights is None:
            import torch

            buffer = io.BytesIO()
            torch.save(
                {
                    "policy": self.model.policy.state_dict(),
                    "optimizer": self.model.policy.optimizer.state_dict(),
                    "num_timesteps": int(self.model.num_timesteps),
                },
                buffer,
            )
            self._weights = base64.b64encode(buffer.getvalue()).decode("ascii")
        return self._weights

    def report(self) -> dict[str, Any]:
        """Return the proposer's report (the LLM coach's requests and verdicts), if any."""
        return proposer_report(self.proposer)

    def state_dict(self) -> dict[str, Any]:
        """Return the RNG, the network (base64 zip), the feature layout and the proposer."""
        proposer_state = getattr(self.proposer, "state_dict", None)
        featurizer = self.featurizer
        return {
            **super().state_dict(),
            "weights": self._encoded_weights(),
            "featurizer": None
            if featurizer is None
            else {
                "block_names": list(featurizer.block_names),
                "n_scores": featurizer.n_scores,
                "models": list(featurizer.models),
                "hash_dim": featurizer.hash_dim,
            },
            "updates": self.updates,
            "proposer": proposer_state() if callable(proposer_state) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a partial rollout starts afresh)."""
        super().load_state_dict(state)
        layout = state.get("featurizer")
        if layout is not None:
            featurizer = Featurizer(
                layout["block_names"],
                layout["n_scores"],
                layout["models"],
                hash_dim=layout["hash_dim"],
            )
            model = self.build(featurizer)
            if state.get("weights"):
                import torch

                raw = io.BytesIO(base64.b64decode(state["weights"]))
                saved = torch.load(raw, map_location="cpu", weights_only=True)
                model.policy.load_state_dict(saved["policy"])
                model.policy.optimizer.load_state_dict(saved["optimizer"])
                model.num_timesteps = int(saved["num_timesteps"])
                self._weights = state["weights"]
        self.updates = int(state.get("updates", 0))
        loader = getattr(self.proposer, "load_state_dict", None)
        if state.get("proposer") is not None and callable(loader):
            loader(state["proposer"])
