"""The induction queue is bounded and coalesces jobs per workflow; `butter stats` shows what was skipped."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

from butter.addon.induction_queue import InductionQueue
from tests.e2e.harness import ROOT
from tests.unit.test_addon import BODY, llm_flow
from tests.unit.test_addon_faults import exchange_once


def blocked_queue(max_jobs: int) -> tuple[InductionQueue, threading.Event]:
    queue, release = InductionQueue(max_jobs=max_jobs), threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    queue.submit(hold)
    started.wait(10)  # the worker is busy; everything after this waits
    return queue, release


def test_jobs_of_one_workflow_coalesce_into_the_newest_and_keep_their_place():
    queue, release = blocked_queue(max_jobs=64)
    ran: list[tuple[str, int]] = []
    futures = [queue.submit(ran.append, (f"workflow-{i % 5}", i), key=f"workflow-{i % 5}") for i in range(200)]
    marker = queue.submit(lambda: None)
    assert queue.waiting() == 6
    release.set()
    marker.result(timeout=10)
    queue.shutdown()
    assert ran == [(f"workflow-{w}", 195 + w) for w in range(5)]  # each workflow once, with its newest job
    assert sum(f.cancelled() for f in futures) == 195
    assert queue.take_skipped() == {"coalesced": 195}


def test_a_full_queue_drops_its_oldest_job_and_counts_it():
    queue, release = blocked_queue(max_jobs=8)
    ran: list[int] = []
    futures = [queue.submit(ran.append, i, key=i) for i in range(20)]
    assert queue.waiting() == 8
    release.set()
    futures[-1].result(timeout=10)
    queue.shutdown()
    assert ran == list(range(12, 20))
    assert all(f.cancelled() for f in futures[:12])
    assert queue.take_skipped() == {"dropped": 12}


def test_shutdown_cancels_waiting_jobs_and_refuses_new_ones():
    queue, release = blocked_queue(max_jobs=8)
    waiting = queue.submit(lambda: None)
    release.set()
    queue.shutdown()
    assert waiting.cancelled() or waiting.done()
    try:
        queue.submit(lambda: None)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a shut-down queue accepted a job")


async def test_a_burst_of_misses_of_one_workflow_queues_one_job_and_stats_show_the_rest(butter):
    addon, _ = butter
    release, started = threading.Event(), threading.Event()
    induce = addon._induce

    def slow_induce(*args):
        started.set()
        release.wait(30)
        return induce(*args)

    addon._induce = slow_induce
    try:
        for i in range(30):  # thirty runs of one workflow: same tools and model, one user message each
            await exchange_once(addon, llm_flow({**BODY, "messages": [{"role": "user", "content": f"order {i}"}]}))
            addon._drain_future().result(timeout=10)
            started.wait(10)
        assert addon.inducer.waiting() == 1
    finally:
        release.set()
    addon._flush_hits(force=True)
    addon._drain_future().result(timeout=10)
    run = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", addon.cache.backend.path, "stats", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(run.stdout)["induction_skipped"] == {"coalesced": 28}
