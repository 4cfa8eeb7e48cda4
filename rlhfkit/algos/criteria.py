"""Several criteria's reward-model scores (helpful, harmless, concise, ...) combined into one reward.

Each criterion's scores live on their own scale, so they are first put on a common one: each is
standardised with a mean and standard deviation frozen on a reference batch (the start policy's
first rollout), then combined by a weighted sum or by a Llama 2 style gate (Touvron et al. 2023,
"Llama 2: Open Foundation and Fine-Tuned Chat Models", section 3.2.2).
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import check_finite, check_positive, check_rank, check_tensor


def criteria_reference(scores: torch.Tensor, min_std: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """mu_c = (1/B) sum_i r_ic,  sigma_c = sqrt((1/B) sum_i (r_ic - mu_c)^2), or 1 where sigma_c <= min_std.

    The reference statistics that make criteria comparable: computed once, on the start policy's
    first scored batch, and then frozen, so a criterion's normalised score keeps its meaning
    while the policy moves (the same idea as the reference length of `length_penalty`). The
    population standard deviation is used; a criterion that does not vary on the reference batch
    gets sigma = 1 (it is only centred), rather than an enormous scale.

    Args:
      scores: (B, C) scores of B episodes on C criteria.
      min_std: sigma_c at or below this counts as no variation, > 0.

    Returns:
      (mean, std), each (C,).
    """
    check_rank("scores", scores, "B", "C")
    check_positive("min_std", min_std)
    if scores.shape[0] == 0:
        raise ValueError("scores must hold at least one episode, got shape (0, C)")
    mean = scores.mean(dim=0)  # (C,)
    std = scores.std(dim=0, unbiased=False)  # (C,)
    return mean, torch.where(std > min_std, std, torch.ones_like(std))


def normalize_criteria(scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """z_ic = (r_ic - mu_c) / sigma_c: each criterion in standard deviations of the reference batch.

    Args:
      scores: (B, C) scores.
      mean: (C,) reference means mu_c (`criteria_reference`).
      std: (C,) reference standard deviations sigma_c > 0.

    Returns:
      (B, C) normalised scores z.
    """
    check_rank("scores", scores, "B", "C")
    for name, x in (("mean", mean), ("std", std)):
        check_rank(name, x, "C")
        if x.shape[0] != scores.shape[1]:
            raise ValueError(f"{name} must have shape (C,) = ({scores.shape[1]},), got {tuple(x.shape)}")
    return (scores - mean.to(scores)) / std.to(scores)


def _check_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    check_rank("z", z, "B", "C")
    check_rank("weights", weights, "C")
    if weights.shape[0] != z.shape[1]:
        raise ValueError(f"weights must have shape (C,) = ({z.shape[1]},), got {tuple(weights.shape)}")
    return weights.to(z)


def weighted_sum(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """r_i = sum_c w_c z_ic: the scalar reward of C normalised criteria.

    A criterion with w_c = 0 does not count, so weights (1, 0) train on the first criterion
    alone. With one criterion and w = 1 the reward is z itself.

    Args:
      z: (B, C) normalised scores (`normalize_criteria`).
      weights: (C,) weights w_c (any sign; 0 drops a criterion).

    Returns:
      (B,) rewards.
    """
    return z @ _check_weights(z, weights)


def gated_reward(z: torch.Tensor, weights: torch.Tensor, gate: int, threshold: float,
                 tagged: torch.Tensor | None = None) -> torch.Tensor:
    """r_i = z_ig if (tagged_i or z_ig < tau) else sum_c w_c z_ic: the gate criterion decides where it is low.

    Llama 2's combination of a safety and a helpfulness reward model (Touvron et al. 2023,
    section 3.2.2): R_c = R_s if the prompt is safety-tagged or R_s < 0.15, else R_h. Here the
    scores are the normalised z (so tau is in standard deviations of the reference batch, not
    Llama 2's sigmoid scale), the gate criterion g plays R_s and the weighted sum of the
    criteria plays R_h (weights (1, 0) with g = 1 is Llama 2's form exactly). A score equal to
    tau is not gated (the comparison is strict, as in the paper).

    Args:
      z: (B, C) normalised scores.
      weights: (C,) weights of the ungated reward.
      gate: index g of the gate criterion (the safety one), 0 <= g < C.
      threshold: tau, in the units of z.
      tagged: optional (B,) bool, True where the prompt is tagged as risky (always gated).

    Returns:
      (B,) rewards.
    """
    weights = _check_weights(z, weights)
    check_finite("threshold", threshold)
    if isinstance(gate, bool) or not isinstance(gate, int) or not 0 <= gate < z.shape[1]:
        raise ValueError(f"gate must be a criterion index in [0, {z.shape[1]}), got {gate!r}")
    gate_z = z[:, gate]  # (B,)
    gated = gate_z < threshold
    if tagged is not None:
        tagged = check_tensor("tagged", tagged)
        if tagged.dtype != torch.bool or tagged.shape != gate_z.shape:
            raise ValueError(f"tagged must be a torch.bool tensor of shape (B,) = ({z.shape[0]},), got dtype "
                             f"{tagged.dtype} shape {tuple(tagged.shape)}")
        gated = gated | tagged.to(gated.device)
    return torch.where(gated, gate_z, z @ weights)
