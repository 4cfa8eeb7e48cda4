"""rlhfkit PPO / GRPO / RLOO on the shared workload: 64 episodes x 32 new tokens per iteration,
4 epochs x 4 minibatches (16 optimizer steps), KL coefficient 0.05, learning rate 3e-6.

PPO scores with the reward model from bench_reward.py; GRPO and RLOO with the python reward
(number of positive words), 16 prompts x 4 samples. One warm-up iteration, then N timed ones.

Old log-probs come from the sampling loop by default (TRL's PPO takes them from `generate` too);
`--old-logprobs forward` adds the exact recomputation (one more no-grad forward per iteration).

Like-for-like rows (what is faster code and what is less work): `--critic separate` gives PPO a separate
value model initialised from the reward model, as TRL's PPO has; `--old-logprobs forward` recomputes the
old log-probs with one more forward, as TRL's GRPO/RLOO do; `--lr-schedule linear` decays the learning
rate to 0 over the run, TRL's default schedule; `--policy-loss clipped_sequence --loss-reduction sequence_sum`
clips one ratio per reply and averages over replies, as TRL's RLOO does.

Usage: python benchmarks/bench_rl.py --algo ppo|grpo|rloo --out DIR [--iters N]
       [--mixed-precision bf16 [--bf16-weights]] [--old-logprobs forward|sampling] [--critic shared|separate]
       [--lr-schedule constant|linear]
       [--learning-rate LR] [--seed S] [--name NAME] [--policy-loss clipped|clipped_sequence]
       [--loss-reduction token|sequence|sequence_sum]
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
    ap.add_argument("--bf16-weights", action="store_true", help="with bf16: bf16 weights, fp32 copies for AdamW")
    ap.add_argument("--old-logprobs", default="sampling", choices=("forward", "sampling"),
                    help="sampling (as TRL's PPO: no extra forward) or forward (first ratio exactly 1)")
    ap.add_argument("--reward-model", type=Path, default=None,
                    help="PPO's reward model (default: OUT/reward_model from bench_reward.py)")
    ap.add_argument("--critic", default="shared", choices=("shared", "separate"),
                    help="PPO's value function: a head on the policy trunk, or a model initialised from the "
                         "reward model")
    ap.add_argument("--lr-schedule", default="constant", choices=("constant", "linear"))
    ap.add_argument("--policy-loss", default="clipped", choices=("clipped", "clipped_sequence"),
                    help="GRPO/RLOO: the ratio per token, or per reply (TRL's RLOO)")
    ap.add_argument("--loss-reduction", default="token", choices=("token", "sequence", "sequence_sum"),
                    help="GRPO/RLOO: how per-token losses are averaged (clipped_sequence: sequence or sequence_sum)")
    ap.add_argument("--learning-rate", type=float, default=W.LEARNING_RATE)
    ap.add_argument("--seed", type=int, default=W.SEED)
    ap.add_argument("--rollout-batch", type=int, default=W.ROLLOUT_BATCH, help="episodes per iteration")
    ap.add_argument("--response-length", type=int, default=W.RESPONSE_LENGTH, help="new tokens per episode")
    ap.add_argument("--name", default=None, help="result name (default: the algorithm, _bf16 for bf16)")
    args = ap.parse_args()
    W.ensure_artifacts()
    reward_model = args.reward_model or args.out / "reward_model"
    common = dict(
        policy=str(W.ART / "policy"), tokenizer=str(W.ART / "tokenizer"), prompts=str(W.ART / "prompts.jsonl"),
        output_dir=str(args.out / f"run_{args.algo}"), overwrite=True, iterations=1 + args.iters,
        rollout_batch_size=args.rollout_batch,
        max_new_tokens=args.response_length, temperature=1.0, stop_at_eos=False, kl_coef=W.KL_COEF,
        update_epochs=W.EPOCHS, num_minibatches=W.MINIBATCHES, learning_rate=args.learning_rate, seed=args.seed,
        threads=W.THREADS, sample_every=0, mixed_precision=args.mixed_precision, lr_schedule=args.lr_schedule,
        old_logprobs=args.old_logprobs, bf16_weights=args.bf16_weights,
    )
    if args.algo == "ppo":
        from rlhfkit.trainers.ppo import train
        from rlhfkit.trainers.rl_config import PPOConfig

        history = train(PPOConfig(**common, reward_model=str(reward_model), critic=args.critic))
    else:
        from rlhfkit.trainers.reinforce import train
        from rlhfkit.trainers.rl_config import ReinforceConfig

        cfg = ReinforceConfig(**common, baseline=args.algo, samples_per_prompt=4, policy_loss=args.policy_loss,
                              loss_reduction=args.loss_reduction, kl_in="loss" if args.algo == "grpo" else "reward")
        history = train(cfg, reward_fn=W.count_positive)
    timed = history[1:]
    key = lambda k: [h[k] for h in timed]  # noqa: E731
    it = W.median(key("time/iteration"))
    name = args.name or args.algo + ("_bf16" if args.mixed_precision == "bf16" else "")
    W.save_result(args.out, name, {
        "algo": args.algo, "mixed_precision": args.mixed_precision, "bf16_weights": args.bf16_weights,
        "old_logprobs": args.old_logprobs,
        "critic": args.critic if args.algo == "ppo" else None, "lr_schedule": args.lr_schedule,
        "policy_loss": None if args.algo == "ppo" else args.policy_loss,
        "loss_reduction": None if args.algo == "ppo" else args.loss_reduction,
        "learning_rate": args.learning_rate, "seed": args.seed,
        "rollout_batch": args.rollout_batch, "response_length": args.response_length,
        "reward_model_sha256": W.folder_sha256(reward_model) if args.algo == "ppo" else None,
        "iter_s_every": [round(h["time/iteration"], 4) for h in history],
        "iters_timed": len(timed),
        "warmup_iter_s": round(history[0]["time/iteration"], 3),
        "iter_s_median": round(it, 3), "iter_s_all": [round(x, 3) for x in key("time/iteration")],
        "gen_s_median": round(W.median(key("time/generation")), 3),
        "score_s_median": round(W.median(key("time/scoring")), 3),
        "train_s_median": round(W.median(key("time/training")), 3),
        "gen_tok_per_s": round(args.rollout_batch * args.response_length / W.median(key("time/generation")), 1),
        "e2e_tok_per_s": round(args.rollout_batch * args.response_length / it, 1),
        "reward": [round(h["reward/mean"], 3) for h in history],
        "kl": [round(h["kl/ref"], 4) for h in history],
    })


if __name__ == "__main__":
    main()
