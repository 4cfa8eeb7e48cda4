"""Load: 20 annotators at once submit 1,000 rankings to the real server, with deliberate retries.

The server runs as `rlhfkit feedback serve` in a subprocess on a free loopback port, on a
SQLite file (the default store; PostgreSQL's concurrent paths are covered by the store tests);
the annotators are threads with their own HTTP client. Afterwards every ranking must be in the
store exactly once, as last sent. Latency percentiles and the server's CPU time are printed and
written to `feedback_load.json` in the test's tmp dir: reported, never asserted.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from rlhfkit.feedback.schema import Prompt, Submission
from rlhfkit.feedback.store import FeedbackStore

ANNOTATORS = 20
PER_ANNOTATOR = 50  # 20 x 50 = 1,000 rankings
PER_PROMPT = 2
PROMPTS = 560  # 1,000 slots needed at 2 per prompt, plus slack
K = 4
RETRY_EVERY = 10  # every 10th ranking is sent again after its answer (a lost answer)
RACE_EVERY = 25  # every 25th is sent twice at the same moment (a retry racing the original)
HTTP_TIMEOUT_S = 15
SERVER_START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "feedback.db")


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], psutil.Process]]:
    """A seeded project served by `rlhfkit feedback serve`; yields (base URL, {name: token}, process)."""
    with FeedbackStore.open(store_url) as store:
        store.create_project("load", K)
        texts = [f"prompt {i}" for i in range(PROMPTS)]
        store.add_prompts("load", texts, [[f"{t} / completion {j}" for j in range(K)] for t in texts])
        tokens = {f"annotator-{i:02d}": store.add_annotator(f"annotator-{i:02d}", "load") for i in range(ANNOTATORS)}
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [sys.executable, "-c", "from rlhfkit.feedback.cli import feedback_app; feedback_app()", "serve",
           "--db", store_url, "--project", "load", "--port", str(port), "--annotators-per-prompt", str(PER_PROMPT)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield base, tokens, psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


@pytest.mark.slow  # 20-40 s on two cores
@pytest.mark.timeout(300)
def test_twenty_annotators_submit_a_thousand_rankings(server, store_url: str, tmp_path: Path) -> None:
    base, tokens, server_process = server
    submit_ms: list[float] = []
    next_ms: list[float] = []
    sent: dict[tuple[str, int], list[int]] = {}  # (annotator, prompt id) -> order sent
    lock = threading.Lock()
    duplicates = 0

    def post(client: httpx.Client, body: dict) -> httpx.Response:
        start = time.perf_counter()
        response = client.post("/api/rankings", json=body)
        with lock:
            submit_ms.append((time.perf_counter() - start) * 1000)
        return response

    def annotate(name: str) -> None:
        nonlocal duplicates
        rng = random.Random(name)
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        with httpx.Client(base_url=base, headers=headers, timeout=HTTP_TIMEOUT_S) as client, \
                ThreadPoolExecutor(2) as pair:
            for n in range(1, PER_ANNOTATOR + 1):
                start = time.perf_counter()
                response = client.get("/api/next")
                with lock:
                    next_ms.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                prompt = response.json()["prompt"]
                assert prompt is not None, f"{name} ran out of prompts after {n - 1}"
                order = [c["id"] for c in prompt["completions"]]
                rng.shuffle(order)
                body = {"prompt_id": prompt["id"], "order": order, "submission_id": uuid.uuid4().hex}
                if n % RACE_EVERY == 0:
                    answers = list(pair.map(lambda b: post(client, b), [body, body]))
                else:
                    answers = [post(client, body)]
                if n % RETRY_EVERY == 0:
                    answers.append(post(client, body))
                assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
                assert sum(not a.json()["duplicate"] for a in answers) == 1  # exactly one stored it
                with lock:
                    duplicates += len(answers) - 1
                    sent[name, prompt["id"]] = order

    start = time.perf_counter()
    with ThreadPoolExecutor(ANNOTATORS) as pool:
        for future in [pool.submit(annotate, name) for name in tokens]:
            future.result(timeout=120)
    elapsed = time.perf_counter() - start
    server_cpu = server_process.cpu_times()

    with FeedbackStore.open(store_url) as store:
        rankings = store.rankings("load")
        with store.engine.connect() as conn:
            n_submissions = conn.scalar(select(func.count()).select_from(Submission))
            counters = dict(conn.execute(select(Prompt.id, Prompt.n_rankings)).all())
    assert len(sent) == ANNOTATORS * PER_ANNOTATOR
    assert len(rankings) == len(sent) and n_submissions == len(sent)  # each exactly once
    assert {(r.annotator, r.prompt_id): r.order for r in rankings} == sent
    per_prompt: dict[int, int] = {}
    for r in rankings:
        per_prompt[r.prompt_id] = per_prompt.get(r.prompt_id, 0) + 1
    assert max(per_prompt.values()) <= PER_PROMPT  # prompts in hand count: never over-assigned
    assert {pid: n for pid, n in counters.items() if n} == per_prompt  # the prompt rows' counters agree

    report = {
        "backend": "sqlite",
        "annotators": ANNOTATORS,
        "rankings": len(rankings),
        "duplicate_sends": duplicates,
        "seconds": round(elapsed, 2),
        "submit_ms": {q: round(percentile(submit_ms, q), 1) for q in (50, 95, 99)},
        "next_ms": {q: round(percentile(next_ms, q), 1) for q in (50, 95, 99)},
        "requests": len(submit_ms) + len(next_ms),
        "server_cpu_s": round(server_cpu.user + server_cpu.system, 1),
    }
    (tmp_path / "feedback_load.json").write_text(json.dumps(report, indent=2))
    print(f"\nfeedback load: {json.dumps(report)}\nwritten to {tmp_path / 'feedback_load.json'}")
