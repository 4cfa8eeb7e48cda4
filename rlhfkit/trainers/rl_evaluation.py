"""Held-out evaluation of an RL run (`--eval-prompts`): the policy on prompts it never trains on.

Before training, every `eval_every` iterations and at the end, one response per held-out prompt
is sampled with a seed that depends only on (run seed, prompt), so every evaluation of the run
compares policies on the same draws. Logged under eval/: the proxy score (the reward model or
function), the gold judge's score when there is one, the KL to the reference summed over the
response, the response length and EOS share, diversity, and the win rates against the start
policy's responses (ties count half). The proxy climbing while the gold win rate falls is reward
hacking, on prompts the policy did not see. With several criteria, each criterion's mean raw score
is eval/reward/<criterion> (eval/reward_mean is their combined reward), and each --gold-fns judge
is eval/gold/<criterion>.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit import seeds
from rlhfkit.algos.kl import kl_k1
from rlhfkit.data.prompts import PromptSet
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.rollout.collect import decode_responses
from rlhfkit.rollout.sampling import sample
from rlhfkit.rollout.scoring import call_text_fn
from rlhfkit.rollout.step import RolloutWorker
from rlhfkit.tracking.diagnostics import text_metrics, win_rate
from rlhfkit.trainers.rl_metrics import gold_metrics


@dataclass
class HeldOutEvaluation:
    prompts: PromptSet
    seed: int
    batch_size: int = 64
    start_scores: list[float] = field(default_factory=list)
    start_gold: list[float] = field(default_factory=list)

    @torch.no_grad()
    def __call__(self, worker: RolloutWorker, gold_fn: Any = None,
                 gold_fns: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Sample, score and judge the current policy on every held-out prompt; the first call is the start."""
        policy = worker.actor.policy
        was_training = policy.training
        policy.eval()
        device = next(policy.parameters()).device
        scores: list[float] = []
        kls: list[float] = []
        lengths: list[float] = []
        ended: list[bool] = []
        texts: list[str] = []
        responses: list[str] = []
        criteria: dict[str, list[float]] = {}  # raw score per criterion, with several criteria
        order = list(range(len(self.prompts)))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            ids, mask, batch_texts = self.prompts.batch(rows, worker.tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            draw_seeds = [seeds.derived_seed(self.seed, seeds.EVALUATION, i) for i in rows]
            with worker.accelerator.autocast():
                # the sampling loop's own log-probs: no second forward of the policy
                out = sample(policy, ids, mask, worker.sampling, stop_token_ids(worker.tokenizer),
                             worker.tokenizer.pad_token_id, draw_seeds, with_logprobs=True)
                logp = out.logp
                ref_logp = worker.reference(ids, mask, out.response_ids)
            batch_responses = decode_responses(worker.tokenizer, out.response_ids, out.response_mask)
            batch_scores = worker.scorer(ids, mask, out.response_ids, out.response_mask, out.ended, batch_texts,
                                         batch_responses).float()
            for name, values in getattr(worker.scorer, "last_criteria", {}).items():
                criteria.setdefault(name, []).extend(values)
            kls += kl_k1(logp.float(), ref_logp.float(), out.response_mask).sum(-1).tolist()
            scores += batch_scores.tolist()
            lengths += out.response_mask.sum(-1).float().tolist()
            ended += out.ended.tolist()
            texts += batch_texts
            responses += batch_responses
        policy.train(was_training)
        metrics = {
            "eval/reward_mean": sum(scores) / len(scores),
            "eval/kl": sum(kls) / len(kls),
            "eval/response_length": sum(lengths) / len(lengths),
            "eval/eos_share": sum(ended) / len(ended),
            **{"eval/" + k.split("/", 1)[1]: v for k, v in text_metrics(responses).items()},
        }
        metrics.update({f"eval/reward/{name}": sum(values) / len(values) for name, values in criteria.items()})
        gold = call_text_fn(gold_fn, texts, responses, ended, what="gold function") if gold_fn is not None else None
        if gold is not None:
            metrics["eval/gold_mean"] = sum(gold) / len(gold)
        metrics.update(gold_metrics("eval/gold", texts, responses, ended, gold_fns=gold_fns))
        if not self.start_scores:  # the first evaluation is the start policy's: the baseline of the win rates
            self.start_scores, self.start_gold = scores, gold or []
        else:
            metrics["eval/win_rate"] = win_rate(scores, self.start_scores)
            if gold is not None and self.start_gold:
                metrics["eval/gold_win_rate"] = win_rate(gold, self.start_gold)
        return metrics

    def state_dict(self) -> dict[str, list[float]]:
        return {"start_scores": self.start_scores, "start_gold": self.start_gold}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.start_scores = list(state.get("start_scores", []))
        self.start_gold = list(state.get("start_gold", []))
