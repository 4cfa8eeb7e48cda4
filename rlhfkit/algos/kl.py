"""KL to the reference policy: per-token estimators, the KL-shaped reward, and beta controllers.

Samples y ~ pi_theta; log_ratio = logp - ref_logp = log pi_theta(y) - log pi_ref(y); the
estimators below estimate KL(pi_theta || pi_ref) = E_{y ~ pi_theta}[log_ratio] (Schulman,
"Approximating KL divergence", 2020).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch

from rlhfkit.algos._checks import (
    check_finite,
    check_mask,
    check_nonnegative,
    check_positive,
    check_rank,
    check_same_shape,
    value_checks_enabled,
)


def _log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    check_same_shape(logp=logp, ref_logp=ref_logp)
    log_ratio = logp - ref_logp
    if mask is not None:
        # zero before any exp: garbage under the mask can then not overflow, even in gradients
        log_ratio = torch.where(check_mask(mask, logp, "logp"), log_ratio, 0.0)
    return log_ratio


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k1 = log pi(y) - log pi_ref(y) = log_ratio.

    Unbiased, high variance, negative whenever the reference gives the token more probability
    (Schulman 2020). The estimator that lm-human-preferences, N+ and TRL put into the reward.

    Args:
      logp: log pi_theta of the sampled tokens, any shape, e.g. (B, T).
      ref_logp: log pi_ref of the same tokens, shape of `logp`.
      mask: optional torch.bool, shape of `logp`; gives 0 where False.

    Returns:
      shape of `logp`.
    """
    return _log_ratio(logp, ref_logp, mask)


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k2 = 0.5 * log_ratio^2.

    Biased, >= 0, low variance (Schulman 2020); the bias is third order in the log-ratio.

    Args:
      logp: log pi_theta of the sampled tokens, any shape.
      ref_logp: log pi_ref, shape of `logp`.
      mask: optional torch.bool, shape of `logp`; gives 0 where False.

    Returns:
      shape of `logp`.
    """
    return 0.5 * _log_ratio(logp, ref_logp, mask) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k3 = (r - 1) - log r = exp(-log_ratio) - 1 + log_ratio,  r = pi_ref(y) / pi(y).

    Unbiased, >= 0 (log r <= r - 1), low variance (Schulman 2020); GRPO's per-token KL term
    (Shao et al. 2024, eq. 4). For |log_ratio| < 1e-3 it is evaluated by its Taylor series
    x^2/2 - x^3/6 + x^4/24, since exp(-x) - 1 + x cancels there (k3 ~ x^2/2 << x).

    Args:
      logp: log pi_theta of the sampled tokens, any shape.
      ref_logp: log pi_ref, shape of `logp`.
      mask: optional torch.bool, shape of `logp`; gives 0 where False.

    Returns:
      shape of `logp`.
    """
    x = _log_ratio(logp, ref_logp, mask)
    series = x**2 * (0.5 - x / 6 + x**2 / 24)  # relative truncation error < x^3 / 60
    return torch.where(x.abs() < 1e-3, series, torch.expm1(-x) + x)


KL_ESTIMATORS: Mapping[str, Callable[..., torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def shaped_rewards(
    score: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """r_t = -beta * kl_t + [t == t_last] * score,  t_last = the row's last True position.

    The KL-shaped per-token reward (Ziegler et al. 2019; Stiennon et al. 2020). The score goes on
    the last token inside the mask (the first EOS, or the last token of a response without EOS),
    as OpenRLHF does. lm-human-preferences puts it at position T-1 (fixed-length responses, no
    mask) and N+/TRL one slot after EOS (a slot the policy mask excludes but their value mask
    keeps). With the score inside the same mask as the policy terms, one mask serves the policy,
    the KL and the value loss, and no post-EOS state is needed.

    Args:
      score: (B,) reward-model scores (after any missing-EOS penalty).
      kl: (B, T) per-token KL estimates (usually `kl_k1` of the rollout log-probs).
      mask: torch.bool (B, T); every row needs a True token to carry its score (checked with value
        checks on, `rlhfkit.algos.value_checks`: it reads the mask, a device sync).
      beta: KL coefficient >= 0.

    Returns:
      (B, T) rewards, 0 where mask is False.
    """
    check_rank("kl", kl, "B", "T")
    check_mask(mask, kl, "kl")
    check_rank("score", score, "B")
    if score.shape[0] != kl.shape[0]:
        raise ValueError(f"score must have shape (B,) = ({kl.shape[0]},), got {tuple(score.shape)}")
    beta = check_nonnegative("beta", beta)
    if value_checks_enabled():
        empty_rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(f"mask rows {empty_rows} have no True token, so their score has no place")
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) last True index
    rewards = torch.where(mask, -beta * kl, 0.0)  # (B, T)
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))  # (B, T)


@dataclasses.dataclass
class FixedKLController:
    """beta_{k+1} = beta_k: a constant KL coefficient (N+ 0.05, TRL 0.05, OpenRLHF 0.01).

    Same interface as `AdaptiveKLController`, so a trainer holds either one.
    """

    value: float

    def __post_init__(self) -> None:
        self.value = check_nonnegative("value", self.value)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; checks the arguments like the adaptive controller. Returns beta."""
        _check_update(current_kl, n_steps)
        return self.value

    def state_dict(self) -> dict[str, float]:
        """{"value": beta}, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore beta from `state_dict()`."""
        self.value = check_nonnegative("state['value']", _read_value(state))


@dataclasses.dataclass
class AdaptiveKLController:
    """e = clip(KL / KL_target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).

    Proportional control of the KL coefficient (Ziegler et al. 2019, section 2.2;
    lm-human-preferences train_policy.py, OpenRLHF kl_controller.py). `update` is called once per
    rollout batch with the batch's mean sequence KL and n_steps = the number of episodes in it.

    Args:
      init_kl_coef: starting beta > 0 (lm-human-preferences 0.15).
      target: target KL in nats per sequence > 0 (6.0).
      horizon: > 0, episodes over which a 20% error changes beta by ~e (10000).
    """

    init_kl_coef: float
    target: float
    horizon: float
    value: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.value = check_positive("init_kl_coef", self.init_kl_coef)
        check_positive("target", self.target)
        check_positive("horizon", self.horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta towards the one that holds KL at the target. Returns the new beta."""
        current_kl, n_steps = _check_update(current_kl, n_steps)
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """{"value": beta}, for checkpoints (target and horizon come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore beta from `state_dict()`."""
        self.value = check_positive("state['value']", _read_value(state))


def _check_update(current_kl: float, n_steps: int) -> tuple[float, int]:
    if isinstance(current_kl, torch.Tensor) and current_kl.numel() == 1:
        current_kl = float(current_kl)
    # a NaN KL would silently turn beta into NaN for the rest of the run
    current_kl = check_finite("current_kl", current_kl)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0 (episodes in the batch), got {n_steps!r}")
    return current_kl, n_steps


def _read_value(state: Mapping[str, float]) -> float:
    if not isinstance(state, Mapping) or "value" not in state:
        raise ValueError(f"state must be a mapping with key 'value' (from state_dict()), got {state!r}")
    return state["value"]
