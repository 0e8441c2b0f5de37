"""AgentDojo (MIT) as a workload: its tasks recorded, its injections as look-alikes.

AgentDojo's dependencies do not belong in butter's environment, so its
tasks are exported by `agentdojo_export.py` under a Python that has it
(`--agentdojo PYTHON`, default `.venv-agentdojo/bin/python` if present).
AgentDojo's tasks have fixed values (its prompts are class constants and its
ground truth reads its environment files), so no flow here varies in
values: each user task is recorded once, replayed unchanged as the control,
and then replayed with every injection vector of its suite carrying an
injection task's goal. Up to the injected text those runs are the recorded
ones; after it, the ground truth is the injection task's (what a model that
follows the injection answers), and butter must not serve the clean
continuation. The 97 tasks of a suite share one root (same tools), so
induction sees siblings from different tasks throughout.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .script import Reply, Run, Step, Turn
from .workloads import Flow, Workload

SYSTEM = "You are an AI assistant that helps the user with their tasks, using the tools you are given."
EXPORTER = Path(__file__).with_name("agentdojo_export.py")
INSTALL_HINT = ("python3 -m venv .venv-agentdojo && .venv-agentdojo/bin/pip install agentdojo  "
                "(290 MB; kept out of butter's .venv)")


def export(python: str) -> dict:
    done = subprocess.run([python, str(EXPORTER)], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout)


def _run(run_id: str, flow: str, tools: list[dict], prompt: str, steps: list[dict], final: str) -> Run:
    script = [Step(Reply(tool_calls=((s["call"][0], s["call"][1]),)), (s["output"],)) for s in steps]
    script.append(Step(Reply(content=final)))
    return Run(run_id, flow, SYSTEM, [Turn(prompt, tuple(tools), tuple(script))])


def build(python: str, progress=print) -> Workload:
    data = export(python)
    flows, injected = [], []
    for suite, content in data["suites"].items():
        for task in content["tasks"]:
            name = f"{suite}/{task['id']}"
            clean = _run(f"agentdojo/{name}", name, content["tools"], task["prompt"], task["steps"], task["final"])
            flows.append(Flow(name, [clean], []))
            if "injected" in task:
                inj = task["injected"]
                run = _run(f"agentdojo/{name}/{inj['injection_task']}", name, content["tools"], task["prompt"],
                           inj["steps"], inj["final"])
                run.twin = clean
                injected.append(run)
    progress(f"AgentDojo {data['version']}: {len(flows)} user tasks, {len(injected)} injected look-alikes")
    return Workload("AgentDojo (fixed values)", flows, {"injection in a tool output": injected},
                    note="tasks recorded once and replayed; injected runs must not get the clean continuation",
                    ks=(1,), substitutive=False)
