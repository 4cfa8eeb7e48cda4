"""The peer run for bench_real_model.py on SmolLM2-135M-Instruct, full vs LoRA, fp32 or bf16:
TRL 1.12's PPOTrainer (--stage ppo) and TRL 1.16's RewardTrainer (--stage reward).

Same work as rlhfkit's bench_real_model.py as far as TRL allows: the same 8 chat prompts (chat
template, generation prompt) x 16 new tokens per iteration (temperature 1, no top-k/top-p, a
response cut at its first EOS), batch 8, 2 PPO epochs x 2 minibatches, lr 1e-5 constant,
kl_coef 0.05, fp32, 2 threads, one warm-up iteration and N timed ones, each configuration in its
own process (its own peak RSS). LoRA: a peft LoraConfig with r=16, alpha=32, dropout 0 on all
linear layers (the LM head excluded), as rlhfkit's `lora_r: 16, lora_alpha: 32`; TRL then uses
the policy with its adapters off as the reference (no reference copy), as rlhfkit does.

Differences from rlhfkit's run, all of which make TRL do strictly more work per iteration:
- TRL 1.12's PPO cannot take a Python reward function, only a reward model: SmolLM2 loaded as
  AutoModelForSequenceClassification (num_labels=1, a new untrained score head) scores each
  rollout, so every iteration pays one extra 135M-parameter forward over the 8 sequences that
  rlhfkit's Python polite-word reward does not (timed separately as `reward_model_s`).
- TRL's value function is a separate model (the same SmolLM2 sequence-classification load),
  trained in full even in the LoRA run (TRL applies peft_config to the policy only), where
  rlhfkit's default critic is a value head on the policy trunk (`critic: shared`). So TRL runs a
  second trunk forward/backward each minibatch and keeps AdamW state for that model too.
The rewards are meaningless (a random head): this measures speed and memory, not learning.

The reward model (--stage reward) has no such difference: TRL's RewardTrainer trains SmolLM2 as
AutoModelForSequenceClassification (num_labels=1) on the comparisons bench_real_model.py wrote to
DIR/reward_train.jsonl (prompt/chosen/rejected chat messages, rendered with the chat template),
batch 16, one epoch, lr linear from 1e-5 (full) or 1e-4 (LoRA), max_length 128; LoRA as above
with task_type SEQ_CLS (the new score head trained in full, as rlhfkit's). pairs/s = comparisons /
wall time of trainer.train(); accuracy on the first batch (logged before any update) and held-out
accuracy by one forward per reply on DIR/reward_eval.jsonl.
bf16 (--precision bf16) is TRL's own bf16 mixed precision (`bf16=True`: autocast on a CPU).

Runs with the peer venv (for PPO with trl 1.12.0 first on PYTHONPATH; PPO was removed from TRL
after 1.12); it does not import rlhfkit. `bench_real_model.py --peer` runs it configuration by
configuration; alone:
  PYTHONPATH=~/.cache/rlhfkit-peer/trl_1_12 ~/.cache/rlhfkit-peer/venv/bin/python \
      benchmarks/peer_real_model.py --out DIR [--iters N] [--model DIR] [--precision no|bf16]
      (one: --one full|lora --stage ppo|reward; reward needs bench_real_model.py's data in DIR and
      TRL 1.16, so no trl_1_12 on PYTHONPATH)
The model folder is the one `rlhfkit models prepare smollm2` prints
(default ~/.cache/rlhfkit/smollm2-135m-instruct).
"""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
               "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}.items():
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# copied from bench_real_model.py (this script must not import rlhfkit or its benchmarks)
REWARD_LR = {"full": 1e-5, "lora": 1e-4}
PROMPTS = ["My order has not arrived yet.", "The app crashes when I log in.", "I was charged twice this month.",
           "How do I cancel my plan?", "Where is my refund?", "The parcel came damaged.",
           "Can I change my delivery address?", "How do I reset my password?"]
SEED = 1234
THREADS = 2


class Timer:
    """Accumulates the wall time of the calls it wraps; `take` returns and resets it."""

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, fn, *a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            self.total += time.perf_counter() - t0

    def take(self) -> float:
        t, self.total = self.total, 0.0
        return t


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_reward(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    model_dir = str(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    train_rows, eval_rows = (read_jsonl(args.out / f"reward_{s}.jsonl") for s in ("train", "eval"))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    peft_config = None
    if args.one == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, lora_dropout=0.0,
                                 target_modules="all-linear")
    cfg = RewardConfig(output_dir=str(args.out / f"trl_reward_{args.one}"), use_cpu=True,
                       bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False, report_to="none",
                       save_strategy="no", seed=SEED, data_seed=SEED, dataloader_num_workers=0, disable_tqdm=True,
                       logging_steps=1, per_device_train_batch_size=16, num_train_epochs=1, max_length=128,
                       learning_rate=REWARD_LR[args.one], lr_scheduler_type="linear",
                       weight_decay=0.0)
    trainer = RewardTrainer(model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(train_rows),
                            peft_config=peft_config)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    scorer = trainer.model.eval()
    correct, margin = 0, 0.0
    with torch.no_grad():
        for row in eval_rows:
            scores = []
            for key in ("chosen", "rejected"):
                text = tok.apply_chat_template(row["prompt"] + row[key], tokenize=False)
                enc = tok(text, return_tensors="pt", add_special_tokens=False)
                scores.append(scorer(**enc).logits[0, 0].item())
            correct += scores[0] > scores[1]
            margin += (scores[0] - scores[1]) / len(eval_rows)
    return {"library": f"trl {trl.__version__}", "stage": "reward", "mode": args.one, "precision": args.precision,
            "pairs_per_s": round(len(train_rows) / train_s, 2), "train_s": round(train_s, 2),
            "start_accuracy": float(trainer.state.log_history[0]["accuracy"]),  # the first batch, before any update
            "eval_accuracy": correct / len(eval_rows), "eval_margin": round(margin, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "threads": torch.get_num_threads()}


def one(args: argparse.Namespace) -> None:
    result = one_ppo(args) if args.stage == "ppo" else one_reward(args)
    (args.out / f"trl_{args.stage}_{args.one}_{args.precision}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def one_ppo(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    model_dir = str(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for p in PROMPTS]
    data = Dataset.from_dict({"input_ids": ids})

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = None if args.one == "lora" else AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    peft_config = None
    if args.one == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0,
                                 target_modules="all-linear", exclude_modules=["lm_head", "score"])

    n_iter = 1 + args.iters
    cfg = PPOConfig(output_dir=str(args.out / f"trl_run_{args.one}"), use_cpu=True,
                    bf16=args.precision == "bf16", fp16=False,
                    gradient_checkpointing=False, report_to="none", save_strategy="no", seed=SEED, data_seed=SEED,
                    dataloader_num_workers=0, disable_tqdm=True, logging_steps=1,
                    per_device_train_batch_size=8, gradient_accumulation_steps=1, num_mini_batches=2,
                    num_ppo_epochs=2, local_rollout_forward_batch_size=8, response_length=16, temperature=1.0,
                    stop_token="eos", missing_eos_penalty=None, total_episodes=8 * n_iter,
                    num_sample_generations=0, learning_rate=1e-5, lr_scheduler_type="constant", kl_coef=0.05)

    # phase timers: generation, the reward model's forward, and the other no-grad rollout forwards
    gen_t, rm_t, nograd_t = Timer(), Timer(), Timer()
    orig_gen, orig_forward, orig_get_reward = ppo_mod.batch_generation, ppo_mod.forward, ppo_mod.get_reward
    ppo_mod.batch_generation = lambda *a, **k: gen_t.add(orig_gen, *a, **k)

    def timed_forward(*a, **k):
        return nograd_t.add(orig_forward, *a, **k) if not torch.is_grad_enabled() else orig_forward(*a, **k)

    def timed_get_reward(model, *a, **k):
        t = rm_t if model is reward else nograd_t
        return t.add(orig_get_reward, model, *a, **k)

    ppo_mod.forward = timed_forward
    ppo_mod.get_reward = timed_get_reward

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t = []
            self.phases = []

        def on_train_begin(self, *a, **k):
            self.t = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            self.t.append(time.perf_counter())
            self.phases.append((gen_t.take(), rm_t.take(), nograd_t.take()))

    cb = StepTimer()
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=data, eval_dataset=data, peft_config=peft_config,
                         callbacks=[cb])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()

    its = [b - a for a, b in zip(cb.t[:-1], cb.t[1:])]
    assert len(its) == n_iter, (len(its), n_iter)
    timed, ph = (its[1:], cb.phases[1:]) if args.iters else (its, cb.phases)  # --iters 0: the warm-up only
    med = statistics.median
    return {"library": f"trl {trl.__version__}", "stage": "ppo", "mode": args.one, "precision": args.precision,
              "iter_s_median": round(med(timed), 2), "iter_s_all": [round(t, 2) for t in timed],
              "warmup_s": round(its[0], 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "gen_s": round(med(p[0] for p in ph), 2), "reward_model_s": round(med(p[1] for p in ph), 2),
              "other_rollout_forward_s": round(med(p[2] for p in ph), 2),
              "train_s": round(med(t - sum(p) for t, p in zip(timed, ph)), 2),
              "trainable_params": trainable, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=2, help="timed iterations after the warm-up (0: time the warm-up)")
    ap.add_argument("--model", type=Path, default=Path("~/.cache/rlhfkit/smollm2-135m-instruct").expanduser())
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    ap.add_argument("--one", choices=("full", "lora"), default=None)
    ap.add_argument("--stage", choices=("ppo", "reward"), default="ppo")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model}: no model folder; run `rlhfkit models prepare smollm2` (in rlhfkit's venv) first")
    if args.stage == "reward" and not (args.out / "reward_train.jsonl").is_file():
        sys.exit(f"{args.out}/reward_train.jsonl: no comparisons; run bench_real_model.py --stages reward first")
    if args.one:
        one(args)
        return
    rows = []
    for mode in ("full", "lora"):
        subprocess.run([sys.executable, __file__, "--out", str(args.out), "--iters", str(args.iters),
                        "--model", str(args.model), "--one", mode, "--stage", args.stage,
                        "--precision", args.precision], check=True)
        rows.append(json.loads((args.out / f"trl_{args.stage}_{mode}_{args.precision}.json").read_text()))
    (args.out / f"trl_{args.stage}_{args.precision}.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
