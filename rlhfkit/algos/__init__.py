"""The math of RLHF as pure tensor functions: one function per equation, no models, no I/O.

Each docstring opens with the formula it computes; docs/math.md maps every equation of the
method to its function and to the test that checks it.
"""

from rlhfkit.algos._checks import value_checks
from rlhfkit.algos.advantages import gae, td_errors
from rlhfkit.algos.criteria import criteria_reference, gated_reward, normalize_criteria, weighted_sum
from rlhfkit.algos.dpo import DPOStats, dpo_loss, ipo_loss, sequence_logprobs
from rlhfkit.algos.hacking import (
    ensemble_spread,
    kl_reward_slope_ratio,
    moving_average,
    pearson_correlation,
    perturbation_effect,
    relative_drift,
    robust_slope,
    standardized_spread,
    window_zscore,
)
from rlhfkit.algos.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    shaped_rewards,
)
from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from rlhfkit.algos.masked import (
    AGGREGATE_MODES,
    aggregate,
    aggregate_denominator,
    explained_variance,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlhfkit.algos.pg import (
    GRPO_SCALES,
    baseline_advantages,
    discounted_returns,
    grpo_advantages,
    moving_mean_update,
    reinforce_loss,
    rloo_advantages,
)
from rlhfkit.algos.ppo import (
    PolicyLossStats,
    PPOLoss,
    ValueLossStats,
    entropy_bonus,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_ppo_policy_loss,
)
from rlhfkit.algos.reward import (
    bradley_terry_loss,
    normalization_gain_bias,
    pair_weights,
    plackett_luce_loss,
    preference_accuracy,
    ranking_to_pairs,
    reward_centering_penalty,
)
from rlhfkit.algos.reward_transforms import clip_reward, conservative_reward, length_penalty
from rlhfkit.algos.selection import ensemble_disagreement, top_pair_uncertainty
from rlhfkit.algos.sft import sft_loss

__all__ = [
    "AGGREGATE_MODES",
    "AdaptiveKLController",
    "DPOStats",
    "FixedKLController",
    "GRPO_SCALES",
    "KL_ESTIMATORS",
    "PPOLoss",
    "PolicyLossStats",
    "ValueLossStats",
    "aggregate",
    "aggregate_denominator",
    "baseline_advantages",
    "bradley_terry_loss",
    "clip_reward",
    "conservative_reward",
    "criteria_reference",
    "discounted_returns",
    "dpo_loss",
    "ensemble_disagreement",
    "ensemble_spread",
    "entropy_bonus",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "gated_reward",
    "grpo_advantages",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_reward_slope_ratio",
    "length_penalty",
    "logprobs_and_entropy",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "moving_average",
    "moving_mean_update",
    "normalize_criteria",
    "normalization_gain_bias",
    "pair_weights",
    "pearson_correlation",
    "perturbation_effect",
    "plackett_luce_loss",
    "ppo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "ranking_to_pairs",
    "reinforce_loss",
    "relative_drift",
    "reward_centering_penalty",
    "rloo_advantages",
    "robust_slope",
    "sequence_logprobs",
    "sequence_ppo_policy_loss",
    "sft_loss",
    "shaped_rewards",
    "standardized_spread",
    "td_errors",
    "top_pair_uncertainty",
    "value_checks",
    "weighted_sum",
    "window_zscore",
]
