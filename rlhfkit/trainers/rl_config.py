"""Settings of the policy-optimisation stages: `rlhfkit ppo` and `rlhfkit reinforce`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhfkit.config import require, setting
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.trainers.settings import OptimSettings, RunSettings


@dataclass
class RolloutSettings:
    """What both RL stages share: models, prompts, sampling, the KL guard, checkpoints."""

    policy: str = setting(EMBEDDED_MODEL, "Start policy (HF id, local dir or 'embedded'); the frozen reference is "
                          "a copy of it.")
    tokenizer: str = setting("", "The policy's tokenizer, folder or HF id (empty = the policy's own).")
    reward_model: str = setting("", "Saved reward model directory (from rlhfkit reward).")
    reward_fn: str = setting("", "Instead of a reward model: a Python function 'module:function' taking "
                             "(prompts, responses) and returning one float per episode.")
    gold_fn: str = setting("", "Optional held-out judge 'module:function' (prompts, responses) -> scores, logged as "
                           "gold/mean every iteration and never used for training (to see reward hacking).")
    prompts: str = setting("", "Prompts: .jsonl/.json/.csv/.parquet with a 'prompt' column, or .txt (one per line).")
    iterations: int = setting(100, "Rollout + update iterations.")
    rollout_batch_size: int = setting(64, "Episodes sampled per iteration.")
    max_prompt_length: int = setting(128, "Prompts keep their last N tokens.")
    max_new_tokens: int = setting(32, "Longest response in tokens.")
    temperature: float = setting(1.0, "Sampling temperature; log-probs for the ratio and KL use logits / T too.")
    top_k: int = setting(0, "Sample from the k most likely tokens only (0 = off).")
    top_p: float = setting(1.0, "Nucleus sampling mass (1 = off).")
    stop_at_eos: bool = setting(True, "Stop a response at its first EOS (everything after it is masked anyway).")
    missing_eos_penalty: float = setting(0.0, "Subtract this from the score of responses that never emit EOS.")
    old_logprobs: str = setting("forward", "Where log pi_old comes from: the trainer's own forward after sampling "
                                "(forward: first ratio exactly 1) or the sampling loop itself (sampling: no extra "
                                "forward; ratio 1 to float precision).", choices=("forward", "sampling"))
    kl_coef: float = setting(0.05, "beta: weight of the KL penalty to the reference policy.")
    kl_estimator: str = setting("k1", "Per-token KL estimator (k1 unbiased, k2 squared, k3 unbiased and >= 0).",
                                choices=("k1", "k2", "k3"))
    adaptive_kl: bool = setting(False, "Adapt beta towards kl_target (Ziegler et al. 2019).")
    kl_target: float = setting(6.0, "Target KL (nats per response) of the adaptive controller.")
    kl_horizon: int = setting(10000, "Horizon of the adaptive KL controller, in episodes.")
    update_epochs: int = setting(4, "Passes over each rollout batch.")
    num_minibatches: int = setting(4, "Minibatches per pass (optimizer steps per pass).")
    clip_eps: float = setting(0.2, "PPO ratio clip range epsilon.")
    ent_coef: float = setting(0.0, "c2: weight of the entropy bonus H.")
    loss_reduction: str = setting("token", "Average per-token losses over all tokens of the minibatch (token) or "
                                  "per sequence first (sequence).", choices=("token", "sequence"))
    checkpoint_every: int = setting(0, "Write a resumable checkpoint every N iterations (0 = only at the end).")
    resume: bool = setting(False, "Continue from output_dir/checkpoint when it exists.")
    sample_every: int = setting(10, "Log a few sample responses every N iterations (0 = never).")
    eval_prompts: str = setting("", "Held-out prompts for a final evaluation against the start policy (optional).")
    learning_rate: float = setting(1e-5, "Peak learning rate of AdamW.")

    def check_rollout(self) -> None:
        require(not (self.reward_model and self.reward_fn), "reward_model",
                "pass only one of --reward-model DIR and --reward-fn module:function")
        require(bool(self.prompts), "prompts", "is required: pass --prompts FILE")
        require(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        require(self.rollout_batch_size >= 1, "rollout_batch_size", f"must be >= 1, got {self.rollout_batch_size}")
        require(self.max_prompt_length >= 1, "max_prompt_length", f"must be >= 1, got {self.max_prompt_length}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.missing_eos_penalty >= 0, "missing_eos_penalty", f"must be >= 0, got {self.missing_eos_penalty}")
        require(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        require(self.kl_target > 0, "kl_target", f"must be > 0, got {self.kl_target}")
        require(self.kl_horizon >= 1, "kl_horizon", f"must be >= 1, got {self.kl_horizon}")
        require(self.update_epochs >= 1, "update_epochs", f"must be >= 1, got {self.update_epochs}")
        require(self.num_minibatches >= 1, "num_minibatches", f"must be >= 1, got {self.num_minibatches}")
        require(self.rollout_batch_size % self.num_minibatches == 0, "num_minibatches",
                f"must divide rollout_batch_size={self.rollout_batch_size}, got {self.num_minibatches}")
        require(self.clip_eps > 0, "clip_eps", f"must be > 0, got {self.clip_eps}")
        require(self.ent_coef >= 0, "ent_coef", f"must be >= 0, got {self.ent_coef}")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        require(self.sample_every >= 0, "sample_every", f"must be >= 0, got {self.sample_every}")


@dataclass
class PPOConfig(RolloutSettings, RunSettings, OptimSettings):
    """PPO with a per-token KL penalty to the reference: loss = -(L_CLIP - c1 L_VF + c2 H)."""

    STAGE: ClassVar[str] = "ppo"

    critic: str = setting("shared", "Value function: a head on the policy trunk (shared) or a separate model "
                          "initialised from the reward model (separate).", choices=("shared", "separate"))
    vf_coef: float = setting(0.1, "c1: weight of the value loss L_VF.")
    clip_eps_value: float = setting(0.2, "Value clip range (0 = unclipped value loss).")
    gamma: float = setting(1.0, "Discount factor gamma.")
    lam: float = setting(0.95, "GAE lambda.")
    whiten_rewards: bool = setting(False, "Whiten per-token rewards before GAE (lm-human-preferences option).")
    target_kl: float = setting(0.0, "Stop an iteration's updates early once approx KL exceeds 1.5 x this "
                               "(0 = never).")

    def __post_init__(self) -> None:
        RunSettings.__post_init__(self)
        OptimSettings.__post_init__(self)
        self.check_rollout()
        require(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
        require(self.clip_eps_value >= 0, "clip_eps_value", f"must be >= 0, got {self.clip_eps_value}")
        require(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")
        require(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        require(self.target_kl >= 0, "target_kl", f"must be >= 0, got {self.target_kl}")
        require(self.critic == "shared" or bool(self.reward_model), "critic",
                "'separate' initialises the critic from the reward model: pass --reward-model")


@dataclass
class ReinforceConfig(RolloutSettings, RunSettings, OptimSettings):
    """Policy gradient: grad J = E[sum_t grad log pi(a_t|s_t) (R - b)], with the baseline b by setting."""

    STAGE: ClassVar[str] = "reinforce"

    baseline: str = setting(
        "rloo", "b: none, a moving mean of R, the value function V(s_t), leave-one-out over the k samples of a "
        "prompt (rloo), or group-normalised advantages (grpo).",
        choices=("none", "moving_mean", "value", "rloo", "grpo"),
    )
    samples_per_prompt: int = setting(4, "k: responses sampled per prompt (>= 2 for rloo and grpo).")
    baseline_decay: float = setting(0.9, "Decay of the moving-mean baseline.")
    kl_in: str = setting("reward", "Where the KL guard enters: the sequence reward R = score - beta KL (RLOO), "
                         "or the loss as beta * k3 per token (GRPO).", choices=("reward", "loss"))
    policy_loss: str = setting(
        "clipped", "reinforce: -logp * A (on-policy: needs update_epochs = num_minibatches = 1); clipped: the "
        "PPO ratio clip on the same advantages, safe for several updates per rollout.",
        choices=("reinforce", "clipped"),
    )
    vf_coef: float = setting(0.1, "Weight of the value loss (baseline=value only).")
    update_epochs: int = setting(1, "Passes over each rollout batch.")
    num_minibatches: int = setting(1, "Minibatches per pass (optimizer steps per pass).")

    def __post_init__(self) -> None:
        RunSettings.__post_init__(self)
        OptimSettings.__post_init__(self)
        self.check_rollout()
        require(self.samples_per_prompt >= 1, "samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        require(self.rollout_batch_size % self.samples_per_prompt == 0, "samples_per_prompt",
                f"must divide rollout_batch_size={self.rollout_batch_size}, got {self.samples_per_prompt}")
        require(self.baseline not in ("rloo", "grpo") or self.samples_per_prompt >= 2, "samples_per_prompt",
                f"baseline '{self.baseline}' compares samples of one prompt: needs >= 2, got {self.samples_per_prompt}")
        require(0 <= self.baseline_decay < 1, "baseline_decay", f"must be in [0, 1), got {self.baseline_decay}")
        require(self.policy_loss == "clipped" or self.update_epochs * self.num_minibatches == 1, "policy_loss",
                "'reinforce' is on-policy: use update_epochs=1 and num_minibatches=1, or policy_loss=clipped")
        require(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
