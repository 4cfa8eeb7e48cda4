"""The shared benchmark workload (../shared/bench): its artifacts, and the environment it runs in.

The workload is defined once in ../shared/bench/peer/common.py (corpus, tokenizer, pretrained
policy, prompts, preference pairs); rlhfkit reads the same artifacts as the peer, from
$PEER_DIR/artifacts, so both do exactly the same work.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_HARNESS = Path(os.environ.get("PEER_HARNESS", ROOT.parent / "shared" / "bench" / "peer"))
PEER_DIR = Path(os.environ.get("PEER_DIR", Path.home() / ".cache" / "rlhfkit-peer"))
ART = PEER_DIR / "artifacts"

# Offline, two threads, CPU only: the settings the peer's figures were measured with.
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
}.items():
    os.environ.setdefault(key, value)

THREADS = 2
SEED = 1234
ROLLOUT_BATCH, RESPONSE_LENGTH, EPOCHS, MINIBATCHES = 64, 32, 4, 4
KL_COEF, LEARNING_RATE = 0.05, 3e-6
POS_WORDS = {"great", "wonderful", "brilliant", "superb", "delightful", "excellent", "beautiful", "moving",
             "charming", "fantastic", "amazing", "fun", "loved", "enjoyed", "liked"}


def count_positive(prompts: list[str], responses: list[str]) -> list[float]:
    """The GRPO/RLOO reward of the workload: the number of positive words in the completion."""
    return [float(sum(w in POS_WORDS for w in r.split())) for r in responses]


def ensure_artifacts() -> None:
    """Build the workload's artifacts with the peer's own script when they are missing."""
    if (ART / "policy" / "config.json").is_file() and (ART / "pairs_train.jsonl").is_file():
        return
    python = PEER_DIR / "venv" / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(PEER_HARNESS / "setup_venv.sh")], check=True)
    subprocess.run([str(python), "build_assets.py", "--pretrain-steps", "300"], cwd=PEER_HARNESS, check=True,
                   env={**os.environ, "PEER_DIR": str(PEER_DIR)})


def folder_sha256(folder: Path) -> str:
    """SHA-256 over a model folder's weight files (name and bytes, sorted): which reward model scored a run."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def save_result(out_dir: Path, name: str, result: dict) -> None:
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "peak_rss_mb": round(peak_rss_mb(), 1), "torch": torch.__version__,
              "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    print("RESULT", name, json.dumps(result))
