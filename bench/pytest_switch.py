"""What the pytest plugin adds per test, against starting a proxy per test.

    .venv/bin/python bench/pytest_switch.py [--tests 30] [--starts 3]

A script, not a test. The plugin (cli/pytest_plugin.py) runs one mitmdump
per session and, per test, loads the test's cassette into its own small
database, switches butter to it (addon/session_control.py `/begin`), and
after the test drains butter's queues (`/end`) and compares the cassette.
This measures, through a real mitmdump on one machine in one run:

- per test, the plugin's work for a cassette of the example project
  (examples/agent-tests: the shared `refunds.jsonl`, 17 nodes): load into a
  fresh database + `/begin` + `/end` + the cassette compared (no change);
- per test, a second test of an already loaded cassette: `/begin` + `/end`;
- the alternative design, a mitmdump started and stopped per test.

Medians of each; the ratio is what the design saves per test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from butter.cli.proxy_process import ProxyOptions, ProxyProcess, ensure_trust  # noqa: E402
from butter.cli.pytest_plugin import ButterSession, Group  # noqa: E402
from butter.store import cassette  # noqa: E402
from butter.store.lmdb_backend import LmdbBackend  # noqa: E402

CASSETTE = ROOT / "examples" / "agent-tests" / "tests" / "cassettes" / "refunds.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=30, help="tests simulated per measurement (default 30)")
    parser.add_argument("--starts", type=int, default=3, help="proxy starts measured (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="butter-bench-pytest-") as tmp:
        work = Path(tmp)
        trust = ensure_trust(work / "conf")
        session = ButterSession("auto", "test", None, {}, [])
        session.start()
        try:
            first, again = [], []
            for n in range(args.tests):
                copy = work / f"c{n}.jsonl"
                copy.write_bytes(CASSETTE.read_bytes())
                group = Group((work, f"t{n}"), "refunds", copy, work / f"db{n}")
                t = time.perf_counter()
                session.begin(group)
                session.end(group)
                backend = LmdbBackend(group.db)  # what `end` does after a test that recorded something
                try:
                    assert cassette.save(backend, copy, "refunds") is False
                finally:
                    backend.close()
                first.append(time.perf_counter() - t)
                t = time.perf_counter()
                session.begin(group)
                session.end(group)
                again.append(time.perf_counter() - t)
        finally:
            session.close()
        starts = []
        for n in range(args.starts):
            t = time.perf_counter()
            proxy = ProxyProcess(ProxyOptions(db=work / f"start{n}"), trust, log=work / "start.log")
            proxy.stop()
            starts.append(time.perf_counter() - t)
    per_test, switch, start = (statistics.median(x) * 1000 for x in (first, again, starts))
    print(f"cassette loaded + switched + drained + compared: {per_test:7.1f} ms per test (median of {args.tests})")
    print(f"switched + drained (cassette already loaded):    {switch:7.1f} ms per test")
    print(f"a mitmdump started and stopped per test:         {start:7.1f} ms per test (median of {args.starts})")
    print(f"ratio: the plugin's per-test cost is {per_test / start:.3f}x a proxy start")


if __name__ == "__main__":
    main()
