"""How much arithmetic each library's RL iteration does on the shared workload, and how fast each runs it.

Counts the floating-point operations of the matrix products of one PPO / GRPO / RLOO iteration, phase by phase
(generation, scoring, training), from the shared policy's config and the workload's settings, for the
operations each library runs (read from its trainer's code; listed below). Then, given a `results.json` of
benchmarks/run.py, divides each phase's FLOPs by its measured seconds: effective GFLOP/s. A ratio of times
is then (ratio of work) x (ratio of speed), so a reader sees how much of it is less work and how much
faster code, and how far a target ratio is from the work alone.

Per token of a forward pass, a GPT-2 trunk of L blocks and width d does 24 L d^2 FLOPs of matrix products
(q, k, v, the attention output, and the 4d MLP), the LM head 2 d V at each position it runs on, and
attention 4 c d L at context length c. A backward pass costs twice its forward. Matrix products only:
elementwise work, the optimizer and Python are what "speed" absorbs.

Operations per iteration (B episodes, P prompt tokens, T new tokens, E epochs x M minibatches):
- both: sampling with a KV cache, a prefill of P tokens then T - 1 one-token steps, the LM head on the last
  position of each (rlhfkit's loop and HF `generate` alike);
- rlhfkit's policy and reference forwards: P + T - 1 input positions (the last token predicts nothing used),
  the last block past its q, k, v and the LM head on the T response states only;
- rlhfkit PPO (shared critic, old log-probs from sampling): a reference forward, a reward-model forward whose
  last block runs on the readout token only (its keys and values on every position), E x M forward +
  backward passes of the policy with its value head;
- TRL 1.12 PPO: reference forward (LM head on all P + T positions), value-model forward, reward-model
  forward, then E x M forward + backward passes of the policy (LM head on all positions) and of the value
  model;
- rlhfkit GRPO / RLOO (old log-probs from sampling): a reference forward, E x M forward + backward passes;
- TRL 1.16 GRPO / RLOO: an old-log-prob forward (num_iterations > 1), a reference forward, E x M forward +
  backward passes (the LM head counted on the T completion positions only, the least it can run on).

Usage: python benchmarks/work_accounting.py [--results benchmarks/results/TAG/results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import workload as W


def model_shape() -> dict[str, int]:
    cfg = json.loads((W.ART / "policy" / "config.json").read_text())
    return {"layers": cfg["n_layer"], "width": cfg["n_embd"], "vocab": cfg["vocab_size"]}


class Counter:
    """FLOPs of forward passes over B sequences of n tokens (trunk, LM head on h positions, attention)."""

    def __init__(self, layers: int, width: int, vocab: int) -> None:
        self.layers, self.width, self.vocab = layers, width, vocab

    def trunk(self, tokens: int, blocks: float | None = None) -> float:
        return 24 * (self.layers if blocks is None else blocks) * self.width ** 2 * tokens

    def head(self, positions: int) -> float:
        return 2 * self.width * self.vocab * positions

    def attention(self, n: int) -> float:
        return sum(4 * c * self.width * self.layers for c in range(1, n + 1))

    def forward(self, batch: int, n: int, head_positions: int, with_trunk: bool = True) -> float:
        """A full forward of B sequences of n tokens with the LM head on `head_positions` of each."""
        return batch * ((self.trunk(n) + self.attention(n) if with_trunk else 0.0) + self.head(head_positions))

    def sampling(self, batch: int, prompt: int, new: int) -> float:
        prefill = self.trunk(prompt) + self.attention(prompt) + self.head(1)
        steps = sum(self.trunk(1) + 4 * (prompt + s) * self.width * self.layers + self.head(1) for s in range(1, new))
        return batch * (prefill + steps)

    def policy_forward(self, batch: int, n: int, t: int) -> float:
        """rlhfkit's policy (and reference) forward over P + T tokens: the last token is not an input (n - 1
        positions), L - 1 blocks on every position, the last block's q, k, v on every position and the rest
        of it (18 d^2) and its attention on the T response states only, the LM head on those T."""
        m = n - 1
        full = self.trunk(m, self.layers - 1) + self.attention(m) * (self.layers - 1) / self.layers
        attention = sum(4 * c * self.width for c in range(m - t + 1, m + 1))  # the T queries' contexts
        last = 6 * self.width ** 2 * m + 18 * self.width ** 2 * t + attention
        return batch * (full + last + self.head(t))

    def readout_reward(self, batch: int, n: int) -> float:
        """rlhfkit's reward-model forward: L - 1 blocks on every token; the last block's q, k, v on every token
        (6 d^2 each) and the rest of it (18 d^2) and its attention on the readout token only."""
        full = self.trunk(n, self.layers - 1) + self.attention(n) * (self.layers - 1) / self.layers
        last = 6 * self.width ** 2 * n + 18 * self.width ** 2 + 4 * n * self.width
        return batch * (full + last)


def iteration_flops(algo: str) -> dict[str, dict[str, float]]:
    """{library: {phase: FLOPs}} of one iteration of the workload."""
    c = Counter(**model_shape())
    b, p, t = W.ROLLOUT_BATCH, 8, W.RESPONSE_LENGTH  # the workload's prompts are 8 tokens
    n, steps, mb = p + t, W.EPOCHS * W.MINIBATCHES, W.ROLLOUT_BATCH // W.MINIBATCHES
    gen = c.sampling(b, p, t)
    if algo == "ppo":
        ours = {"generation": gen, "scoring": c.policy_forward(b, n, t) + c.readout_reward(b, n),
                "training": steps * 3 * c.policy_forward(mb, n, t)}
        peer = {"generation": gen, "scoring": c.forward(b, n, n) + 2 * c.forward(b, n, 0),
                "training": steps * 3 * (c.forward(mb, n, n) + c.forward(mb, n, 0))}
    else:
        ours = {"generation": gen, "scoring": c.policy_forward(b, n, t),
                "training": steps * 3 * c.policy_forward(mb, n, t)}
        peer = {"generation": gen, "scoring": 2 * c.forward(b, n, t), "training": steps * 3 * c.forward(mb, n, t)}
    return {"rlhfkit": ours, "TRL": peer}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=None, help="a results.json of benchmarks/run.py")
    args = ap.parse_args()
    measured = json.loads(args.results.read_text()) if args.results else None
    lines = ["| algorithm | library | GFLOP: generation / scoring / training / total | work ratio |"
             + (" seconds: generation / scoring / training / iteration | effective GFLOP/s: the phases / whole |"
                if measured else ""),
             "|---|---|---|---|" + ("---|---|" if measured else "")]
    for algo in ("ppo", "grpo", "rloo"):
        flops = iteration_flops(algo)
        totals = {lib: sum(ph.values()) for lib, ph in flops.items()}
        for lib, phases in flops.items():
            g = [phases[k] / 1e9 for k in ("generation", "scoring", "training")]
            row = (f"| {algo.upper()} | {lib} | {' / '.join(f'{x:.1f}' for x in g)} / {sum(g):.1f} | "
                   f"{totals[lib] / totals['TRL']:.2f} |")
            if measured:
                side = measured["ours" if lib == "rlhfkit" else "peer"]["fp32"].get(algo, {})
                secs = [side.get("gen_s_median"), side.get("score_s_median", side.get("rollout_score_s_median")),
                        side.get("train_s_median"), side.get("iter_s_median")]
                if None in secs:
                    row += " - | - |"
                else:
                    speed = [x / s for x, s in zip(g, secs)] + [sum(g) / secs[3]]
                    row += (f" {' / '.join(f'{s:.2f}' for s in secs)} | {' / '.join(f'{v:.0f}' for v in speed)} |")
            lines.append(row)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
