"""rlhfkit PPO / GRPO / RLOO on the shared workload: 64 episodes x 32 new tokens per iteration,
4 epochs x 4 minibatches (16 optimizer steps), KL coefficient 0.05, learning rate 3e-6.

PPO scores with the reward model from bench_reward.py; GRPO and RLOO with the python reward
(number of positive words), 16 prompts x 4 samples. One warm-up iteration, then N timed ones.

Old log-probs come from the sampling loop by default (TRL's PPO takes them from `generate` too);
`--old-logprobs forward` adds the exact recomputation (one more no-grad forward per iteration).

Usage: python benchmarks/bench_rl.py --algo ppo|grpo|rloo --out DIR [--iters N] [--mixed-precision bf16]
       [--old-logprobs forward|sampling]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import workload as W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=("ppo", "grpo", "rloo"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    ap.add_argument("--old-logprobs", default="sampling", choices=("forward", "sampling"),
                    help="sampling (as TRL's PPO: no extra forward) or forward (first ratio exactly 1)")
    ap.add_argument("--reward-model", type=Path, default=None,
                    help="PPO's reward model (default: OUT/reward_model from bench_reward.py)")
    args = ap.parse_args()
    W.ensure_artifacts()
    common = dict(
        policy=str(W.ART / "policy"), tokenizer=str(W.ART / "tokenizer"), prompts=str(W.ART / "prompts.jsonl"),
        output_dir=str(args.out / f"run_{args.algo}"), overwrite=True, iterations=1 + args.iters,
        rollout_batch_size=W.ROLLOUT_BATCH,
        max_new_tokens=W.RESPONSE_LENGTH, temperature=1.0, stop_at_eos=False, kl_coef=W.KL_COEF,
        update_epochs=W.EPOCHS, num_minibatches=W.MINIBATCHES, learning_rate=W.LEARNING_RATE, seed=W.SEED,
        threads=W.THREADS, sample_every=0, mixed_precision=args.mixed_precision, lr_schedule="constant",
        old_logprobs=args.old_logprobs,
    )
    if args.algo == "ppo":
        from rlhfkit.trainers.ppo import train
        from rlhfkit.trainers.rl_config import PPOConfig

        reward_model = args.reward_model or args.out / "reward_model"
        history = train(PPOConfig(**common, reward_model=str(reward_model), critic="shared"))
    else:
        from rlhfkit.trainers.reinforce import train
        from rlhfkit.trainers.rl_config import ReinforceConfig

        cfg = ReinforceConfig(**common, baseline=args.algo, samples_per_prompt=4, policy_loss="clipped",
                              kl_in="loss" if args.algo == "grpo" else "reward")
        history = train(cfg, reward_fn=W.count_positive)
    timed = history[1:]
    key = lambda k: [h[k] for h in timed]  # noqa: E731
    it = W.median(key("time/iteration"))
    W.save_result(args.out, args.algo + ("_bf16" if args.mixed_precision == "bf16" else ""), {
        "algo": args.algo, "mixed_precision": args.mixed_precision, "old_logprobs": args.old_logprobs,
        "iters_timed": len(timed),
        "warmup_iter_s": round(history[0]["time/iteration"], 3),
        "iter_s_median": round(it, 3), "iter_s_all": [round(x, 3) for x in key("time/iteration")],
        "gen_s_median": round(W.median(key("time/generation")), 3),
        "score_s_median": round(W.median(key("time/scoring")), 3),
        "train_s_median": round(W.median(key("time/training")), 3),
        "gen_tok_per_s": round(W.ROLLOUT_BATCH * W.RESPONSE_LENGTH / W.median(key("time/generation")), 1),
        "e2e_tok_per_s": round(W.ROLLOUT_BATCH * W.RESPONSE_LENGTH / it, 1),
        "reward": [round(h["reward/mean"], 3) for h in history],
        "kl": [round(h["kl/ref"], 4) for h in history],
    })


if __name__ == "__main__":
    main()
