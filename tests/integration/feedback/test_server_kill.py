"""The feedback server killed with SIGKILL while annotators submit rankings at the same time.

The promise (the store commits every ranking before answering): every submission that got a
success answer (200 or 201) is in the store afterwards with the ranks it was sent with, and no
ranking is half-stored (each has a rank for every one of the prompt's K completions). Run on
SQLite and on PostgreSQL (the `postgres` marker), with RLHFKIT_KILL_ROUNDS rounds (default 1).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rlhfkit.feedback.store import FeedbackStore

K = 3
ANNOTATORS = 6
PROMPTS = 120
ROUNDS = int(os.environ.get("RLHFKIT_KILL_ROUNDS", "1"))
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(url: str, project: str) -> list[str]:
    """A project of PROMPTS prompts with K completions each, and ANNOTATORS tokens."""
    with FeedbackStore.open(url) as store:
        store.create_project(project, K)
        store.add_prompts(project, [f"prompt {i}" for i in range(PROMPTS)],
                          [[f"completion {i}.{j}" for j in range(K)] for i in range(PROMPTS)])
        return [store.add_annotator(f"{project}-a{i}", project) for i in range(ANNOTATORS)]


def _annotate(base: str, token: str, acked: list[tuple[str, int, dict[int, int]]], stop: threading.Event,
              rng: random.Random) -> None:
    """Rank the next prompt again and again; remember each ranking the server said it stored."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                view = client.get("/api/next").json()["prompt"]
                if view is None:
                    return
                ids = [c["id"] for c in view["completions"]]
                ranks = dict(zip(ids, rng.sample(range(K), K)))
                sid = uuid.uuid4().hex
                answer = client.post("/api/rankings", json={"prompt_id": view["id"], "ranks": ranks,
                                                            "submission_id": sid})
            except (httpx.HTTPError, ValueError, KeyError):
                return  # the server is gone
            if answer.status_code in (200, 201):
                acked.append((sid, view["id"], ranks))


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("the server did not start in time")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sigkill_during_concurrent_submissions_loses_no_acknowledged_ranking(store_url: str, round_: int) -> None:
    project = f"kill{round_}"
    tokens = _setup(store_url, project)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "feedback", "serve", "--db", store_url,
                             "--project", project, "--port", str(port), "--annotators-per-prompt", str(ANNOTATORS)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    acked: list[tuple[str, int, dict[int, int]]] = []
    stop = threading.Event()
    rng = random.Random(round_)
    try:
        _wait_healthy(base, proc)
        threads = [threading.Thread(target=_annotate, args=(base, t, acked, stop, random.Random(i)))
                   for i, t in enumerate(tokens)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(acked) < 20 and time.time() < deadline:  # some rankings are in before the kill
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)

    with FeedbackStore.open(store_url) as store:
        stored = {r.submission_id: r for r in store.rankings(project)}
    lost = [sid for sid, _, _ in acked if sid not in stored]
    changed = [sid for sid, prompt_id, ranks in acked
               if sid in stored and (stored[sid].prompt_id != prompt_id or stored[sid].ranks != ranks)]
    half = [r.submission_id for r in stored.values() if not r.skip and sorted(r.ranks.values()) != list(range(K))]
    backend = "postgresql" if store_url.startswith("postgresql") else "sqlite"
    print(f"\nserver kill ({backend}): {len(acked)} acknowledged, {len(stored)} stored, "
          f"{len(lost)} lost, {len(half)} half-stored")
    assert len(acked) >= 20
    assert not lost, f"{len(lost)} acknowledged submissions are not in the store"
    assert not changed and not half
