"""Settings of the policy-optimisation stages: `rlhfkit ppo` and `rlhfkit reinforce`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhfkit.config import Settings, require, setting
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.errors import ConfigError
from rlhfkit.trainers.settings import LoRASettings, MasterWeightSettings, OptimSettings, RunSettings


def parse_pairs(setting: str, items: list[str], value: type = str) -> dict[str, Any]:
    """['helpful=1', 'concise=2'] -> {'helpful': 1.0, 'concise': 2.0} (value converts each right-hand
    side); a one-line ConfigError naming the setting for a malformed item or a name given twice."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ConfigError(f"setting '{setting}': expected criterion=value items separated by commas, got "
                              f"{item!r}")
        if name in out:
            raise ConfigError(f"setting '{setting}': criterion '{name}' is given twice")
        try:
            out[name] = value(text)
        except ValueError:
            raise ConfigError(f"setting '{setting}': {name}={text!r} is not a {value.__name__}") from None
        if value is float and not math.isfinite(out[name]):
            raise ConfigError(f"setting '{setting}': {name}={text} must be a finite number")
    return out


def iterations_from_steps(max_steps: int, cfg: Any) -> int:
    """iterations = ceil(max_steps / (update_epochs x num_minibatches)), the optimizer steps of one iteration."""
    per_iteration = cfg.update_epochs * cfg.num_minibatches
    return -(-max_steps // per_iteration)


@dataclass
class RolloutSettings:
    """What both RL stages share: models, prompts, sampling, the KL guard, evaluation, checkpoints."""

    policy: str = setting(EMBEDDED_MODEL, "Start policy (HF id, local dir or 'embedded'); the frozen reference is "
                          "a copy of it.")
    tokenizer: str = setting("", "The policy's tokenizer, folder or HF id (empty = the policy's own).")
    reward_model: str = setting("", "Saved reward model directory (from rlhfkit reward). A model with one head "
                                "per criterion needs --reward-weights (docs/criteria.md).")
    criterion_models: list[str] = setting(
        [], "Instead of --reward-model: one one-head reward model per criterion, as criterion=DIR items, comma "
        "separated (helpful=rm_helpful,concise=rm_concise); needs --reward-weights.")
    reward_weights: list[str] = setting(
        [], "How several criteria form the reward: criterion=weight items, comma separated (helpful=1,concise=2). "
        "Each criterion's score is normalised, z = (r - mu) / sigma with mu and sigma frozen on the run's first "
        "rollout (the start policy's samples), and the reward is sum_c w_c z_c; a criterion left out has weight 0 "
        "(helpful=1 trains on helpful alone). Required with several criteria; with a one-head --reward-model, empty "
        "keeps its plain score. --reward-ensemble, --length-penalty and --reward-clip act on the combined reward.")
    reward_gate: str = setting(
        "", "The Llama 2 gate (Touvron et al. 2023, 3.2.2) as criterion=threshold (harmless=-0.5): where that "
        "criterion's normalised score z is below the threshold, the reward is that z alone; elsewhere the "
        "--reward-weights sum (empty = no gate).")
    reward_gate_column: str = setting(
        "", "A true/false column of the --prompts and --eval-prompts files marking the prompts that are always "
        "gated, whatever their score (Llama 2's safety-tagged prompts); needs --reward-gate (empty = none).")
    gold_fns: list[str] = setting(
        [], "Held-out judges per criterion, criterion=module:function items, comma separated, each (prompts, "
        "responses) -> scores; logged as gold/<criterion> every iteration and eval/gold/<criterion> in the "
        "held-out evaluation, never trained on.")
    allow_untrained_reward_model: bool = setting(False, "Accept a --reward-model that is not a trained reward "
                                                 "model (a plain causal LM gets a score head of random weights).")
    reward_fn: str = setting("", "Instead of a reward model: a Python function 'module:function' taking "
                             "(prompts, responses) and returning one float per episode.")
    gold_fn: str = setting("", "Optional held-out judge 'module:function' (prompts, responses) -> scores, logged as "
                           "gold/mean every iteration and never used for training (to see reward hacking).")
    prompts: str = setting("", "Prompts: .jsonl/.json/.csv/.parquet with a 'prompt' column, or .txt (one per line).")
    iterations: int = setting(100, "Rollout + update iterations.", ge=1, aliases={"max_steps": iterations_from_steps})
    rollout_batch_size: int = setting(64, "Episodes sampled per iteration.", ge=1)
    generation_batch_size: int = setting(0, "Episodes sampled at once by each process (0 = its whole share of the "
                                         "rollout batch); lower it to bound the KV cache's memory. The samples are "
                                         "the same whatever the value.", ge=0)
    max_prompt_length: int = setting(128, "Prompts keep their last N tokens. max_prompt_length + max_new_tokens "
                                     "must fit the policy's context (and the reward model's when it shares the "
                                     "policy's tokenizer): the default is lowered to fit it, a value you set "
                                     "that does not fit is an error.", ge=1)
    max_new_tokens: int = setting(32, "Longest response in tokens. The default is lowered when the context "
                                  "leaves no room for it (at most half the context when max_prompt_length is "
                                  "also the default).", ge=1)
    temperature: float = setting(1.0, "Sampling temperature; log-probs for the ratio and KL use logits / T too.", gt=0)
    top_k: int = setting(0, "Sample from the k most likely tokens only (0 = off).", ge=0)
    top_p: float = setting(1.0, "Nucleus sampling mass (1 = off).", gt=0, le=1)
    stop_at_eos: bool = setting(True, "Stop a response at its first EOS (everything after it is masked anyway).")
    missing_eos_penalty: float = setting(0.0, "Subtract this from the score of responses that never emit EOS.", ge=0)
    old_logprobs: str = setting("forward", "Where log pi_old comes from: the trainer's own forward after sampling "
                                "(forward: first ratio exactly 1) or the sampling loop itself (sampling: no extra "
                                "forward; ratio 1 to float precision).", choices=("forward", "sampling"))
    kl_coef: float = setting(0.05, "beta: weight of the KL penalty to the reference policy.", ge=0)
    kl_estimator: str = setting("k1", "Per-token KL estimator (k1 unbiased, k2 squared, k3 unbiased and >= 0).",
                                choices=("k1", "k2", "k3"))
    adaptive_kl: bool = setting(False, "Adapt beta towards kl_target (Ziegler et al. 2019).")
    kl_target: float = setting(6.0, "Target KL (nats per response) of the adaptive controller.", gt=0)
    kl_horizon: int = setting(10000, "Horizon of the adaptive KL controller, in episodes.", ge=1)
    clip_eps: float = setting(0.2, "PPO ratio clip range epsilon.", gt=0)
    ent_coef: float = setting(0.0, "c2: weight of the entropy bonus H.", ge=0)
    loss_reduction: str = setting("token", "Average per-token losses over all tokens of the minibatch (token) or "
                                  "per sequence first (sequence).", choices=("token", "sequence"))
    checkpoint_every: int = setting(0, "Write a resumable checkpoint every N iterations (0 = only at the end), as "
                                    "output_dir/checkpoint-<iterations done>.", ge=0)
    keep_checkpoints: int = setting(1, "Checkpoints kept: the newest N, older ones are removed once a new one is "
                                    "complete.", ge=1, aliases={"save_total_limit": None})
    resume: bool = setting(False, "Continue from the newest intact output_dir/checkpoint-N (settings that change "
                           "the run's numbers must stay as they were; more iterations are applied); without one "
                           "the run starts from the beginning.")
    save_merged: bool = setting(True, "With LoRA, also write the merged weights as a plain transformers folder in "
                                "output_dir (the adapter always goes to output_dir/adapter, in peft's format).")
    sample_every: int = setting(10, "Log a few sample responses every N iterations (0 = never).", ge=0)
    eval_prompts: str = setting("", "Held-out prompts (same formats as --prompts) on which the policy is evaluated "
                                "before training, every eval_every iterations and at the end: score, gold score, "
                                "KL and win rate against the start policy's responses (empty = no evaluation).")
    eval_every: int = setting(0, "Evaluate on eval_prompts every N iterations (0 = before training and at the end "
                              "only).", ge=0)
    eval_batch_size: int = setting(64, "Held-out prompts sampled per generation batch during evaluation.", ge=1)

    # Reward hacking: the ensemble, the reward transforms and the alarms (docs/reward-hacking.md).
    reward_ensemble: list[str] = setting(
        [], "More reward model folders trained on the same comparisons (other seeds: rlhfkit reward --seed N; another "
        "base model: rlhfkit reward --model M), comma separated. Their disagreement with --reward-model on the "
        "policy's samples feeds the ensemble alarm (reward/ensemble_spread_standardized, each model in its own "
        "standard units of the first batch) and --conservative-k (reward/ensemble_spread); the reward stays "
        "--reward-model's score unless k > 0.")
    conservative_k: float = setting(0.0, "Train on the ensemble's mean score minus k times its spread, a "
                                    "conservative reward (0 = off; needs --reward-ensemble).", ge=0)
    length_penalty: float = setting(0.0, "Subtract c x (length - L_ref) / L_ref from the score of responses longer "
                                    "than L_ref, the start policy's mean length on the first batch (0 = off).", ge=0)
    reward_clip: float = setting(0.0, "Clip the score to [-c, c] before the KL penalty (0 = off).", ge=0)
    on_alarm: str = setting(
        "warn", "What a reward-hacking alarm does: warn (log it to alarms.jsonl and the console), stop (end the run "
        "there and save that policy), or checkpoint (also write a checkpoint at that iteration and go on).",
        choices=("warn", "stop", "checkpoint"))
    alarm_baseline: int = setting(5, "Iterations at the start of the run whose statistics are the alarms' "
                                  "baseline (the policy is still close to the reference there).", ge=2)

    def rows_per_step(self) -> int:
        """Episodes in one optimizer step (the unit of gradient_accumulation_steps)."""
        return self.rollout_batch_size // self.num_minibatches  # type: ignore[attr-defined]

    def check_rollout(self, minibatches: int) -> None:
        require(not (self.reward_model and self.reward_fn), "reward_model",
                "pass only one of --reward-model DIR and --reward-fn module:function")
        require(not (self.criterion_models and (self.reward_model or self.reward_fn)), "criterion_models",
                "replaces --reward-model and --reward-fn: pass only one of them")
        models = parse_pairs("criterion_models", self.criterion_models)
        weights = parse_pairs("reward_weights", self.reward_weights, float)
        gate = parse_pairs("reward_gate", [self.reward_gate] if self.reward_gate else [], float)
        require("mean" not in parse_pairs("gold_fns", self.gold_fns), "gold_fns",
                "a criterion may not be named 'mean' (gold/mean is --gold-fn's metric); rename it")
        require(not models or bool(weights), "reward_weights",
                f"--criterion-models scores {', '.join(models)}; say how to combine them, e.g. --reward-weights "
                + ",".join(f"{c}=1" for c in models))
        require(not ((weights or gate) and self.reward_fn), "reward_weights",
                "combines the criteria of reward models; --reward-fn gives one score already")
        require(not gate or bool(weights), "reward_gate",
                "needs --reward-weights for the reward where the gate criterion is not low (e.g. helpful=1)")
        require(len(gate) <= 1, "reward_gate", "takes one criterion=threshold")
        require(not self.reward_gate_column or bool(gate), "reward_gate_column",
                "marks prompts for the gate: pass --reward-gate criterion=threshold too")
        require(bool(self.prompts), "prompts", "is required: pass --prompts FILE")
        require(not self.conservative_k or bool(self.reward_ensemble), "conservative_k",
                "needs an ensemble: pass --reward-ensemble DIR,... (reward models trained with other seeds)")
        require(not self.reward_ensemble or bool(self.reward_model), "reward_ensemble",
                "needs --reward-model (the first member and the reward)")
        require(bool(self.output_dir), "output_dir", "must not be empty")
        require(self.rollout_batch_size % minibatches == 0, "num_minibatches",
                f"must divide rollout_batch_size={self.rollout_batch_size}, got {minibatches}")


@dataclass
class PPOConfig(RolloutSettings, RunSettings, OptimSettings, MasterWeightSettings, LoRASettings, Settings):
    """PPO with a per-token KL penalty to the reference: loss = -(L_CLIP - c1 L_VF + c2 H)."""

    STAGE: ClassVar[str] = "ppo"

    critic: str = setting("shared", "Value function: a head on the policy trunk (shared) or a separate model "
                          "initialised from the reward model (separate).", choices=("shared", "separate"))
    update_epochs: int = setting(4, "Passes over each rollout batch.", ge=1)
    num_minibatches: int = setting(4, "Minibatches per pass (optimizer steps per pass).", ge=1)
    vf_coef: float = setting(0.1, "c1: weight of the value loss L_VF.", ge=0)
    clip_eps_value: float = setting(0.2, "Value clip range (0 = unclipped value loss).", ge=0)
    gamma: float = setting(1.0, "Discount factor gamma.", ge=0, le=1)
    lam: float = setting(0.95, "GAE lambda.", ge=0, le=1)
    whiten_rewards: bool = setting(False, "Whiten per-token rewards before GAE (lm-human-preferences option).")
    target_kl: float = setting(0.0, "Stop an iteration's updates early once approx KL exceeds 1.5 x this "
                               "(0 = never).", ge=0)

    def check(self) -> None:
        self.check_rollout(self.num_minibatches)
        require(self.critic == "shared" or bool(self.reward_model), "critic",
                "'separate' initialises the critic from the reward model: pass --reward-model")


@dataclass
class ReinforceConfig(RolloutSettings, RunSettings, OptimSettings, MasterWeightSettings, LoRASettings, Settings):
    """Policy gradient: grad J = E[sum_t grad log pi(a_t|s_t) (R - b)], with the baseline b by setting."""

    STAGE: ClassVar[str] = "reinforce"

    baseline: str = setting(
        "rloo", "b: none, a moving mean of R, the value function V(s_t), leave-one-out over the k samples of a "
        "prompt (rloo), or group-normalised advantages (grpo).",
        choices=("none", "moving_mean", "value", "rloo", "grpo"),
    )
    samples_per_prompt: int = setting(4, "k: responses sampled per prompt (>= 2 for rloo and grpo).", ge=1)
    baseline_decay: float = setting(0.9, "Decay of the moving-mean baseline.", ge=0, lt=1)
    kl_in: str = setting("reward", "Where the KL guard enters: the sequence reward R = score - beta KL (RLOO), "
                         "or the loss as beta * k3 per token (GRPO).", choices=("reward", "loss"))
    policy_loss: str = setting(
        "clipped", "reinforce: -logp * A (on-policy: needs update_epochs = num_minibatches = 1); clipped: the "
        "PPO ratio clip on the same advantages, per token, safe for several updates per rollout; clipped_sequence: "
        "one ratio per reply, the product of its tokens' (the reply as one action, TRL's RLOO; needs "
        "loss_reduction sequence or sequence_sum and a per-reply baseline).",
        choices=("reinforce", "clipped", "clipped_sequence"),
    )
    update_epochs: int = setting(1, "Passes over each rollout batch.", ge=1)
    num_minibatches: int = setting(1, "Minibatches per pass (optimizer steps per pass).", ge=1)
    vf_coef: float = setting(0.1, "Weight of the value loss (baseline=value only).", ge=0)

    def check(self) -> None:
        self.check_rollout(self.num_minibatches)
        require(self.rollout_batch_size % self.samples_per_prompt == 0, "samples_per_prompt",
                f"must divide rollout_batch_size={self.rollout_batch_size}, got {self.samples_per_prompt}")
        require(self.baseline not in ("rloo", "grpo") or self.samples_per_prompt >= 2, "samples_per_prompt",
                f"baseline '{self.baseline}' compares samples of one prompt: needs >= 2, got {self.samples_per_prompt}")
        require(self.policy_loss != "clipped_sequence" or self.loss_reduction in ("sequence", "sequence_sum"),
                "loss_reduction", "policy_loss=clipped_sequence averages one loss per reply: use "
                f"loss_reduction=sequence or sequence_sum, got {self.loss_reduction!r}")
        require(self.policy_loss != "clipped_sequence" or self.baseline != "value", "baseline",
                "policy_loss=clipped_sequence needs one advantage per reply: use baseline rloo, grpo, moving_mean or "
                "none (the value baseline gives one per token)")
        require(self.policy_loss != "reinforce" or self.update_epochs * self.num_minibatches == 1, "policy_loss",
                "'reinforce' is on-policy: use update_epochs=1 and num_minibatches=1, or policy_loss=clipped")
