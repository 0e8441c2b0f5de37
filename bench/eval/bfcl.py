"""BFCL multi-turn as record/replay workloads, with the real backends executing.

Source: the `bfcl-eval` package (Apache-2.0), installed on first use with
`pip install --no-deps bfcl-eval mpmath==1.3.0` (an evaluation dependency,
not a CI one). For each chosen `multi_turn_base` task:

- the tools are the task's classes' function docs (`multi_turn_func_doc/`),
  as OpenAI function tools;
- the entity values the user quotes (file names, titles, ids, tokens,
  numbers) that the ground-truth calls use verbatim are varied, consistently
  in the user turns, the initial backend state and the ground-truth calls, to
  make runs of one flow that differ only in values;
- the ground-truth calls are executed one by one against BFCL's own backend
  classes (`eval_checker/multi_turn_eval/func_source_code/`), so each tool
  result is what the real backend returns for those values. A value whose
  change makes the backend fail where the original did not is left alone.

A model that follows the ground truth calls one tool per step and ends each
turn with a short text naming the calls it made; a turn whose ground truth is
empty (the model should ask, or cannot act) is answered with a fixed request
for the missing detail. The look-alike negatives are the same tasks' versions
in `miss_param` (an entity removed from the text), `miss_func` (a tool
withheld until a later turn) and `long_context` (much larger tool outputs),
with values varied the same way.
"""
from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from .script import Reply, Run, Step, Turn
from .workloads import Flow, Workload

SYSTEM = "You are a helpful assistant. Use the tools to do what the user asks, one call at a time."
ASK_TEXT = "I need one more detail before I can do that. Could you tell me exactly which one you mean?"
CANNOT_TEXT = "I cannot do that with the tools I have right now."
NEGATIVE_SETS = ("miss_param", "miss_func", "long_context")
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper", "kelp",
         "lumen", "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sierra", "tundra", "umber", "violet",
         "willow", "yarrow", "zephyr", "copper", "meadow", "lantern", "falcon", "marble", "orchid", "saffron"]


# -- the package ---------------------------------------------------------------

def ensure_installed() -> Path:
    try:
        import bfcl_eval  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "bfcl-eval", "mpmath==1.3.0"],
                       check=True)
        importlib.invalidate_caches()
    import bfcl_eval
    return Path(bfcl_eval.__file__).parent


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Dataset:
    def __init__(self) -> None:
        self.root = ensure_installed()
        from bfcl_eval.constants.executable_backend_config import (CLASS_FILE_PATH_MAPPING,
                                                                   MULTI_TURN_FUNC_DOC_FILE_MAPPING,
                                                                   STATELESS_CLASSES)
        self.modules, self.stateless = CLASS_FILE_PATH_MAPPING, set(STATELESS_CLASSES)
        data = self.root / "data"
        self.docs = {cls: _lines(data / "multi_turn_func_doc" / name) for cls, name in MULTI_TURN_FUNC_DOC_FILE_MAPPING.items()
                     if (data / "multi_turn_func_doc" / name).exists()}
        self.sets: dict[str, list[dict]] = {}
        for name in ("base",) + NEGATIVE_SETS:
            tasks = _lines(data / f"BFCL_v4_multi_turn_{name}.json")
            answers = {a["id"]: a["ground_truth"] for a in _lines(data / "possible_answer" / f"BFCL_v4_multi_turn_{name}.json")}
            for task in tasks:
                task["ground_truth"] = answers[task["id"]]
                task["set"] = name
            self.sets[name] = tasks


# -- tools ---------------------------------------------------------------------

_TYPES = {"dict": "object", "float": "number", "tuple": "array", "int": "integer", "bool": "boolean", "str": "string"}


def _schema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "type" and isinstance(value, str):
                if value == "any":
                    continue
                out[key] = _TYPES.get(value, value)
            else:
                out[key] = _schema(value)
        return out
    if isinstance(node, list):
        return [_schema(v) for v in node]
    return node


def _tool(doc: dict) -> dict:
    return {"type": "function", "function": {"name": doc["name"], "description": doc["description"],
                                             "parameters": _schema(doc["parameters"])}}


def tools_per_turn(ds: Dataset, task: dict) -> list[tuple[dict, ...]]:
    """The tool list of every turn: miss_func withholds tools until their turn."""
    excluded = set(task.get("excluded_function") or [])
    docs = [d for cls in task["involved_classes"] for d in ds.docs[cls] if d["name"] not in excluded]
    withheld: dict[str, int] = {}
    for turn, names in (task.get("missed_function") or {}).items():
        for name in names:
            withheld[name] = int(turn)
    return [tuple(_tool(d) for d in docs if withheld.get(d["name"], -1) <= t) for t in range(len(task["question"]))]


# -- executing ground truth ------------------------------------------------------

class Backends:
    """Fresh instances of a task's backend classes, loaded with its initial state."""

    def __init__(self, ds: Dataset, task: dict, long_context: bool):
        self.methods: dict[str, Callable] = {}
        for cls in task["involved_classes"]:
            instance = getattr(importlib.import_module(ds.modules[cls]), cls)()
            if cls not in ds.stateless:
                instance._load_scenario(copy.deepcopy(task["initial_config"].get(cls, {})), long_context=long_context)
            for name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not name.startswith("_"):
                    self.methods[name] = method

    def call(self, source: str) -> tuple[str, dict, str]:
        """(tool name, named arguments, output as BFCL serialises it)."""
        node = ast.parse(source.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            raise ValueError(f"not a call: {source}")
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        method = self.methods[name]
        params = list(inspect.signature(method).parameters)
        args = {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        args.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
        args = json.loads(json.dumps(args))  # tuples become lists, as they would on the wire
        try:
            result = method(**args)
            if isinstance(result, str):
                output = result
            elif isinstance(result, dict):
                try:
                    output = json.dumps(result)
                except TypeError:
                    output = str(result)
            else:
                output = str(result)
        except Exception as e:  # the backend's own error is a tool output too
            output = f"Error during execution: {e}"
        return name, args, output


def _is_error(output: str) -> bool:
    return output.startswith("Error during execution") or '"error"' in output[:200].lower()


def execute(ds: Dataset, task: dict) -> list[list[tuple[str, dict, str]]]:
    backends = Backends(ds, task, long_context=task["set"] == "long_context")
    return [[backends.call(src) for src in turn] for turn in task["ground_truth"]]


def to_run(ds: Dataset, task: dict, run_id: str, flow: str, values: dict) -> Run:
    executed = execute(ds, task)
    tools = tools_per_turn(ds, task)
    turns = []
    for t, (question, calls) in enumerate(zip(task["question"], executed)):
        user = "\n".join(m["content"] for m in question if m.get("role") == "user") or None
        steps = [Step(Reply(tool_calls=((name, args),)), (output,)) for name, args, output in calls]
        if calls:
            done = ", ".join(f"{name}({', '.join(f'{k}={json.dumps(v, ensure_ascii=False)}' for k, v in args.items())})"
                             for name, args, _ in calls)
            steps.append(Step(Reply(content=f"Done: {done}.")))
        else:
            steps.append(Step(Reply(content=CANNOT_TEXT if task["set"] == "miss_func" else ASK_TEXT)))
        turns.append(Turn(user, tools[t], tuple(steps)))
    return Run(run_id, flow, SYSTEM, turns, values=values)


# -- varying entity values ---------------------------------------------------------

_QUOTED = re.compile(r"""(?:(?<=^)|(?<=[\s(\[:,]))(['"])([^'"\n]{2,60}?)\1(?=[\s.,;:!?)\]]|$)""")
_NUMBER = re.compile(r"(?<![\w.,$])(\d{2,})(?![\w]|[.,]\d)")


def _arg_values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _arg_values(v)]
    if isinstance(value, list):
        return [x for v in value for x in _arg_values(v)]
    return [value]


def candidates(task: dict, executed: list[list[tuple[str, dict, str]]]) -> list[str]:
    """Values the user states that the ground truth uses verbatim."""
    used = {v for turn in executed for _, args, _ in turn for v in _arg_values(args)}
    used_text = {str(v) for v in used if not isinstance(v, bool)}
    text = "\n".join(m["content"] for turn in task["question"] for m in turn)
    found: list[str] = []
    for _, value in _QUOTED.findall(text):
        if value in used_text and value not in found:
            found.append(value)
    for value in _NUMBER.findall(text):
        if value in used_text and value not in found and not any(value in f for f in found):
            found.append(value)
    return found


def _fresh(value: str, r: random.Random, variant: int, variants: int) -> str:
    """A value of the same shape: words for words, digits for digits, extension kept.

    Variant i draws its words from its own share of the word list and starts
    its digit runs with its own digit, so two variants never agree on a token
    by chance: in purely substitutive runs a token that stays equal in the
    recorded runs would rightly be learned as a constant.
    """
    stem, dot, ext = value.rpartition(".")
    if dot and stem and ext.isalpha() and len(ext) <= 4:
        return _fresh(stem, r, variant, variants) + "." + ext
    if variants <= len(WORDS):
        share = WORDS[variant % variants::variants]
    else:  # more variants than words: each variant's words start with its own two
        n = len(WORDS)
        share = [WORDS[variant // n % n] + WORDS[variant % n] + w for w in WORDS]
    out = []
    for piece in re.findall(r"[A-Za-z]+|\d+|[^A-Za-z\d]+", value):
        if piece.isdigit():
            lead = str(1 + variant % 9)
            out.append(lead + "".join(str(r.randint(0, 9)) for _ in range(len(piece) - 1)))
        elif piece.isalpha():
            word = r.choice(share)
            out.append(word.upper() if piece.isupper() and len(piece) > 1 else word.title() if piece[0].isupper() else word)
        else:
            out.append(piece)
    return "".join(out)


def substitute(task: dict, mapping: dict[str, str]) -> dict:
    """The task with every old value replaced, as a whole token, everywhere."""
    if not mapping:
        return copy.deepcopy(task)
    olds = sorted(mapping, key=len, reverse=True)
    pattern = re.compile("|".join(rf"(?<![\w.]){re.escape(o)}(?![\w]|\.\w)" for o in olds))
    numbers = {int(o): int(n) for o, n in mapping.items() if o.isdigit() and len(o) >= 4}

    def text(s: str) -> str:
        return pattern.sub(lambda m: mapping[m.group(0)], s)

    def walk(node: Any, in_config: bool) -> Any:
        if isinstance(node, str):
            return text(node)
        if isinstance(node, bool):
            return node
        if isinstance(node, int) and in_config and node in numbers:
            return numbers[node]
        if isinstance(node, dict):
            return {text(k) if isinstance(k, str) else k: walk(v, in_config) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, in_config) for v in node]
        return node

    out = copy.deepcopy(task)
    out["question"] = walk(task["question"], False)
    out["ground_truth"] = walk(task["ground_truth"], False)
    out["initial_config"] = walk(task["initial_config"], True)
    return out


def _signature(executed: list[list[tuple[str, dict, str]]]) -> list[list[tuple[str, bool]]]:
    return [[(name, _is_error(out)) for name, _, out in turn] for turn in executed]


def _variant(ds: Dataset, task: dict, values: list[str], seed: str, variant: int = 0,
             variants: int = 1) -> tuple[dict, dict[str, str]] | None:
    r = random.Random(seed)
    mapping = {v: _fresh(v, r, variant, variants) for v in values}
    if any(new == old for old, new in mapping.items()):
        return None
    varied = substitute(task, mapping)
    try:
        if _signature(execute(ds, varied)) != _signature(execute(ds, task)):
            return None
    except Exception:
        return None
    return varied, mapping


def _visible_before_use(run: Run, value: str) -> bool:
    """Whether every reply that says `value` comes after a request that showed it.

    BFCL's ground truth sometimes uses a value the conversation has not shown
    yet (the model is assumed to know the file system). Varying such a value
    gives two runs the very same request with different right answers, which
    no cache could tell apart; those values are left alone.
    """
    seen = run.system
    for turn in run.turns:
        seen += "\n" + (turn.user or "")
        for step in turn.steps:
            if value in step.reply.describe() and value not in seen and json.dumps(value)[1:-1] not in seen:
                return False
            seen += "\n" + "\n".join(step.results)
    return True


def usable_values(ds: Dataset, task: dict) -> list[str]:
    """Candidates whose change leaves the backend's successes and errors alone,
    and which the conversation shows before any reply uses them."""
    try:
        first, second = execute(ds, task), execute(ds, task)
    except Exception:
        return []
    if first != second:  # a backend that is not deterministic cannot be replayed at all
        return []
    usable = []
    for v in candidates(task, first):
        made = [_variant(ds, task, [v], f"probe:{task['id']}:{v}:{i}", i, 2) for i in range(2)]
        if all(made) and all(_visible_before_use(to_run(ds, varied, "probe", "probe", {}), mapping[v])
                             for varied, mapping in made):
            usable.append(v)
    return usable


def build(n_tasks: int, held_out: int = 3, recorded: int = 3, negatives_per_task: int = 1, seed: str = "bfcl",
          progress: Callable[[str], None] = print, probation: int = 0) -> list[Workload]:
    ds = Dataset()
    base = ds.sets["base"]
    order = list(range(len(base)))
    random.Random(seed).shuffle(order)
    flows: list[Flow] = []
    negatives: dict[str, list[Run]] = {name: [] for name in NEGATIVE_SETS}
    skipped = {"no varied value": 0, "variant broke the backend": 0}
    for index in order:
        if len(flows) >= n_tasks:
            break
        task = base[index]
        values = usable_values(ds, task)
        if not values:
            skipped["no varied value"] += 1
            continue
        variants = []
        total = recorded + held_out + negatives_per_task + probation
        for i in range(total):
            made = _variant(ds, task, values, f"{seed}:{task['id']}:{i}", i, total)
            if made is None:
                break
            variants.append(made)
        if len(variants) < total:
            skipped["variant broke the backend"] += 1
            continue
        name = task["id"].replace("multi_turn_", "")
        runs = [to_run(ds, varied, f"bfcl/{name}/{i}", name, mapping) for i, (varied, mapping) in enumerate(variants)]
        # The last variants are live traffic (probation), played through the recording proxy.
        live = runs[recorded + held_out + negatives_per_task:]
        flows.append(Flow(name, runs[:recorded], runs[recorded:recorded + held_out], live))
        for j, (_, mapping) in enumerate(variants[recorded + held_out:recorded + held_out + negatives_per_task]):
            for set_name in NEGATIVE_SETS:
                twin = ds.sets[set_name][index]
                assert twin["id"].endswith(f"_{index}"), twin["id"]
                varied = substitute(twin, mapping)
                try:
                    negative = to_run(ds, varied, f"bfcl/{set_name}/{index}/{j}", name, mapping)
                    negative.twin = to_run(ds, substitute(task, mapping), f"bfcl/twin/{index}/{j}", name, mapping)
                    negatives[set_name].append(negative)
                except Exception as e:  # a look-alike the executor cannot run is left out, and said so
                    progress(f"BFCL: {twin['id']} left out: {e!r}")
    steps = sum(len(r.steps()) for f in flows for r in f.held_out)
    progress(f"BFCL: {len(flows)} flows, {sum(len(f.held_out) for f in flows)} held-out runs ({steps} requests); "
             f"skipped {skipped}")
    labels = {"miss_param": "miss_param (entity removed from the text)",
              "miss_func": "miss_func (a tool withheld)",
              "long_context": "long_context (much larger tool outputs)"}
    return [Workload("BFCL multi-turn base", flows, {labels[k]: v for k, v in negatives.items()},
                     note="values varied per run; real BFCL backends executing the ground truth")]
