"""TRL's PPO (1.12), GRPO and RLOO (1.16) on the shared workload, for a fixed number of iterations at a
chosen learning rate, seed, rollout batch and response length, recording each iteration's wall time, its
mean reward and the peak RSS: the peer side of benchmarks/bench_time_to_quality.py and bench_scale.py.
Run with the peer venv; it never imports rlhfkit:

    ~/.cache/rlhfkit-peer/venv/bin/python benchmarks/peer_rl.py --algo ppo|grpo|rloo \
        --lr 3e-5 --seed 1 --iters 20 [--rollout-batch 64] [--response-length 32] --out FILE.json
    (PPO needs PYTHONPATH=~/.cache/rlhfkit-peer/trl_1_12, as the peer harness runs it.)

The trainers are built exactly as in ../shared/bench/peer/bench_ppo.py and bench_grpo.py (64 episodes x
32 tokens per iteration, 4 epochs x 4 minibatches, KL 0.05), with these changes: the learning rate, the
seed, the rollout size, and a constant learning-rate schedule (TRL's default decays linearly to 0 over
the run, which would make the time to a target depend on the planned number of iterations; rlhfkit runs
constant here too).

Writes {"algo", "lr", "seed", "iter_s": [...], "reward": [...], "peak_rss_mb"}: PPO's reward is the reward
model's mean score (objective/scores), GRPO's and RLOO's the mean number of positive words (reward).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PEER_HARNESS = Path(os.environ.get("PEER_HARNESS", Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer"))


def ppo(C, torch, lr: float, n_iter: int) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = C.load_tokenizer(padding_side="left")
    prompts = C.read_jsonl("prompts.jsonl")
    train = Dataset.from_dict({"input_ids": [p["input_ids"] for p in prompts]})
    evald = Dataset.from_dict({"input_ids": [p["input_ids"] for p in prompts[:64]]})
    policy = GPT2LMHeadModel.from_pretrained(os.path.join(C.ART, "policy"))
    ref = GPT2LMHeadModel.from_pretrained(os.path.join(C.ART, "policy"))
    rm_path = os.environ.get("PEER_REWARD_MODEL", os.path.join(C.ART, "reward_model"))
    reward = GPT2ForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    value = GPT2ForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    cfg = PPOConfig(
        **C.common_trainer_kwargs("ppo_ttq"), per_device_train_batch_size=C.ROLLOUT_BATCH,
        gradient_accumulation_steps=1, num_mini_batches=C.NUM_MINI_BATCHES, num_ppo_epochs=C.NUM_PPO_EPOCHS,
        local_rollout_forward_batch_size=C.ROLLOUT_BATCH, response_length=C.RESPONSE_LENGTH, temperature=1.0,
        total_episodes=C.ROLLOUT_BATCH * n_iter, num_sample_generations=0, stop_token=None,
        missing_eos_penalty=None, logging_steps=1, learning_rate=lr, lr_scheduler_type="constant",
    )
    cb = C.step_timer_callback()
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=train, eval_dataset=evald, callbacks=[cb])
    trainer.train()
    logs = [log for log in cb.logs if "objective/scores" in log]
    return cb.step_durations(), [log["objective/scores"] for log in logs]


def grpo_or_rloo(C, torch, algo: str, lr: float, n_iter: int) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import GPT2LMHeadModel

    if algo == "grpo":
        from trl import GRPOConfig as Cfg
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Cfg
        from trl import RLOOTrainer as Trainer
    steps_per_iter = C.NUM_MINI_BATCHES * C.NUM_PPO_EPOCHS
    tok = C.load_tokenizer(padding_side="left")
    prompts = C.read_jsonl("prompts.jsonl")
    train = Dataset.from_dict({"prompt": [p["prompt"] for p in prompts]})
    policy = GPT2LMHeadModel.from_pretrained(os.path.join(C.ART, "policy"))
    cfg = Cfg(
        **C.common_trainer_kwargs(algo + "_ttq"), per_device_train_batch_size=C.ROLLOUT_BATCH // C.NUM_MINI_BATCHES,
        gradient_accumulation_steps=1, steps_per_generation=C.NUM_MINI_BATCHES, num_iterations=C.NUM_PPO_EPOCHS,
        num_generations=4, max_completion_length=C.RESPONSE_LENGTH, temperature=1.0, top_k=0, top_p=1.0,
        beta=0.05, learning_rate=lr, lr_scheduler_type="constant", max_steps=steps_per_iter * n_iter,
        logging_steps=steps_per_iter,
    )

    def positive_words(completions, **kwargs):
        return [float(C.count_positive(c)) for c in completions]

    cb = C.step_timer_callback()
    trainer = Trainer(model=policy, reward_funcs=positive_words, args=cfg, train_dataset=train,
                      processing_class=tok, callbacks=[cb])
    trainer.train()
    steps = cb.step_durations()
    iters = [sum(steps[i * steps_per_iter:(i + 1) * steps_per_iter]) for i in range(n_iter)]
    # One log per iteration: the mean reward of the rollout that iteration trained on.
    return iters, [log["reward"] for log in cb.logs if "reward" in log]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", choices=("ppo", "grpo", "rloo"), required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--rollout-batch", type=int, default=64, help="episodes per iteration")
    ap.add_argument("--response-length", type=int, default=32, help="new tokens per episode")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(PEER_HARNESS))
    import common as C  # the peer's environment: offline, 2 threads, its seed

    C.SEED = args.seed  # common_trainer_kwargs reads it: Trainer's seed and data_seed
    C.ROLLOUT_BATCH, C.RESPONSE_LENGTH = args.rollout_batch, args.response_length
    torch = C.setup_torch()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.algo == "ppo":
        iter_s, reward = ppo(C, torch, args.lr, args.iters)
    else:
        iter_s, reward = grpo_or_rloo(C, torch, args.algo, args.lr, args.iters)
    import trl

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "library": f"trl {trl.__version__}", "algo": args.algo, "lr": args.lr, "seed": args.seed,
        "iter_s": [round(x, 4) for x in iter_s], "reward": [round(float(x), 4) for x in reward],
        "rollout_batch": args.rollout_batch, "response_length": args.response_length,
        "process_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(C.peak_rss_mb(), 1),
    }, indent=2))


if __name__ == "__main__":
    main()
