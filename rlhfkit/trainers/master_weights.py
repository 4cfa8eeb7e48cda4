"""bf16 weights for the forward and backward passes, fp32 master copies for the optimizer (`--bf16-weights`).

Under bf16 autocast alone the weights stay fp32: every forward casts each weight to bf16 for its matrix
products, and every backward casts its gradient back, through one more autograd node per weight.
With `--bf16-weights` the model's trained parameters are stored in bf16, and an fp32 copy of each
(the master weight) is what AdamW updates:

    g32 = float32(g16)           (after each micro-batch's backward, summed in fp32)
    w32 <- AdamW(w32, g32)       (the update in fp32: small steps are not lost to bf16 rounding)
    w16 = bfloat16(w32)          (the weights the next forward reads)

Gradients are clipped on the fp32 copies. The matrix products see the same bf16-rounded weights as
under autocast; what changes is that embeddings, norm weights and biases are read in bf16 too, so
the residual stream between blocks is bf16 (autocast keeps it fp32). Norms and losses still run in
fp32 under autocast. On a 2-core CPU with native bf16 (AMX) a training step of the benchmark's
policy takes about 8% less time (benchmarks/README.md). Checkpoints and saved models hold the fp32
copies (`fp32_weights`), so they are exact.

Full fine-tuning on one process only: LoRA keeps a frozen fp32 base to merge into, and DDP would
all-reduce bf16 gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from rlhfkit.errors import ConfigError


def check_bf16_weights(cfg: Any, mixed_precision: str, processes: int) -> None:
    """One-line ConfigError when `--bf16-weights` is asked for where it cannot work."""
    if not cfg.bf16_weights:
        return
    if mixed_precision != "bf16":
        raise ConfigError(f"setting 'bf16_weights': needs bf16 mixed precision, and this run's mixed_precision "
                          f"'{cfg.mixed_precision}' resolves to '{mixed_precision}'; pass --mixed-precision bf16 "
                          "or drop --bf16-weights")
    if cfg.dtype != "float32":
        raise ConfigError(f"setting 'bf16_weights': keeps fp32 master copies of float32 weights; --dtype "
                          f"{cfg.dtype} loads the weights in another dtype: use --dtype float32 or drop --bf16-weights")
    if cfg.lora_r:
        raise ConfigError("setting 'bf16_weights': full fine-tuning only (LoRA merges into a frozen fp32 base); "
                          "drop --bf16-weights or --lora-r")
    if processes > 1:
        raise ConfigError(f"setting 'bf16_weights': one process only ({processes} were launched, and DDP would "
                          "average bf16 gradients); drop --bf16-weights")


class MasterWeights:
    """The trained float32 parameters of `module`, stored in bf16, with the fp32 copies AdamW updates.

    Build it before the optimizer and give the optimizer `parameters()` (the fp32 copies). Each
    optimizer step: `accumulate_grads()` after every backward, clip and step on `parameters()`, then
    `master_to_model()`.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad and p.dtype == torch.float32]
        self.masters = [p.detach().clone().requires_grad_(True) for p in self.params]
        self._store_bf16()

    def parameters(self) -> list[torch.Tensor]:
        """The fp32 master copies: what the optimizer updates and the gradients are clipped on."""
        return self.masters

    def accumulate_grads(self) -> None:
        """g32 += float32(g16) for every parameter, and clear g16 (micro-batches then sum in fp32)."""
        for p, w in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            w.grad = p.grad.float() if w.grad is None else w.grad.add_(p.grad)
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """w16 = bfloat16(w32): the weights the next forward reads."""
        torch._foreach_copy_([p.data for p in self.params], self.masters)

    @torch.no_grad()
    def _store_bf16(self) -> None:
        """The module's parameters become bf16 casts of the fp32 copies (new storage)."""
        for p, w in zip(self.params, self.masters, strict=True):
            p.data = w.detach().to(torch.bfloat16)

    @torch.no_grad()
    def restore_fp32(self) -> None:
        """End bf16 storage: the module's parameters become the fp32 copies for good (after training, so
        that the final evaluation, normalisation and save read exactly the weights that are saved)."""
        for p, w in zip(self.params, self.masters, strict=True):
            p.data = w.detach()

    @contextmanager
    def fp32_weights(self) -> Iterator[None]:
        """While open, the module's parameters ARE the fp32 copies (same storage): what a checkpoint saves
        and what loading one writes to. On exit they are bf16 again, cast from the copies."""
        self.restore_fp32()
        try:
            yield
        finally:
            self._store_bf16()


def fp32_weights(master: MasterWeights | None) -> Any:
    """`master.fp32_weights()`, or nothing to do without bf16 weights."""
    return nullcontext() if master is None else master.fp32_weights()
