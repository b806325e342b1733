"""Creativity tasks: the LLM-Discussion benchmark formats, and a small built-in task set.

Four task types (the ones BILLY evaluates on):

* ``aut`` — Alternative Uses Test: ``{"Task": [{"Problem": [lines with {object}], "Purpose"}],
  "Examples": [{"object": ...}], "Amount"}``. The prompt is ``Task[0]`` (LLM-Discussion's
  "Baseline" problem) with ``{object}`` filled in.
* ``instances`` and ``similarities`` (Wallach–Kogan tests): ``{"Examples": [question, ...]}``.
* ``scientific`` (Scientific Creativity Test): ``{"Task": [{"Original", "Example": [question,
  ...], "Amount"}]}``; the items are the ``Example`` questions, flattened in file order (as
  LLM-Discussion does).

Every prompt ends with :data:`LIST_INSTRUCTION` (a numbered list, one idea per line), so the
answers of all methods can be parsed the same way. Duplicate questions (``instances_100.json``
repeats 19) are dropped, keeping the first. Item ids are ``"{index:03d}-{sha1(prompt)[:6]}"``, so
a resumed run never mixes up items if the data file changes.

The built-in set (``persona_lens/evals/creativity/data/*.json``, 10 items per task, written
for persona_lens in the same file formats) lets the harness run without the reference data;
``tasks_dir`` points at an LLM-Discussion ``Datasets`` folder instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

TASKS = ("aut", "instances", "similarities", "scientific")
#: folder names of the LLM-Discussion ``Datasets`` layout
TASK_FOLDERS = {"aut": "AUT", "instances": "Instances", "similarities": "Similarities", "scientific": "Scientific"}
#: LLM-Discussion's split suffixes, tried in this order by ``split="auto"``
SPLITS = ("10", "30_test", "100", "10_val", "3", "example")

LIST_INSTRUCTION = "Answer with a numbered list (1. ... 2. ... 3. ...), one idea per line."


class TaskFormatError(ValueError):
    """A task file does not have the expected LLM-Discussion layout."""


@dataclass(frozen=True)
class TaskItem:
    task: str  # one of TASKS
    item_id: str  # stable id: index + prompt hash
    question: str  # the benchmark question, without the list instruction
    subject: str  # the object (AUT) or the question itself
    source: str  # "builtin" or the file it came from

    @property
    def prompt(self) -> str:
        """The user prompt every method answers: the question + the numbered-list instruction."""
        return f"{self.question} {LIST_INSTRUCTION}"

    def to_dict(self) -> dict:
        return {**asdict(self), "prompt": self.prompt}


def _item_id(index: int, question: str) -> str:
    return f"{index:03d}-{hashlib.sha1(question.encode('utf-8')).hexdigest()[:6]}"


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _dedupe(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for question, subject in pairs:
        key = question.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append((question, subject))
    return out


def parse_task_data(task: str, data: dict, source: str = "builtin", template_index: int = 0) -> list[TaskItem]:
    """Items of one task from a loaded LLM-Discussion-format JSON object."""
    task = normalize_task_name(task)
    if not isinstance(data, dict):
        raise TaskFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    pairs: list[tuple[str, str]] = []
    if task == "aut":
        try:
            problem = data["Task"][template_index]["Problem"]
            examples = data["Examples"]
        except (KeyError, IndexError, TypeError) as exc:
            raise TaskFormatError(
                f"{source}: an AUT file needs Task[{template_index}].Problem and Examples ({exc!r})") from None
        template = _clean(" ".join(problem) if isinstance(problem, list) else problem)
        if "{object}" not in template:
            raise TaskFormatError(f"{source}: the AUT problem has no {{object}} placeholder")
        for ex in examples:
            obj = ex.get("object") if isinstance(ex, dict) else ex
            if not obj:
                raise TaskFormatError(f"{source}: AUT example without an object: {ex!r}")
            pairs.append((template.replace("{object}", _clean(obj)), _clean(obj)))
    elif task in ("instances", "similarities"):
        examples = data.get("Examples")
        if not isinstance(examples, list):
            raise TaskFormatError(f"{source}: a {task} file needs an Examples list")
        pairs = [(_clean(q), _clean(q)) for q in examples if _clean(q)]
    else:  # scientific
        groups = data.get("Task")
        if not isinstance(groups, list):
            raise TaskFormatError(f"{source}: a scientific file needs a Task list")
        for group in groups:
            if not isinstance(group, dict) or not isinstance(group.get("Example"), list):
                raise TaskFormatError(f"{source}: every scientific Task entry needs an Example list")
            pairs.extend((_clean(q), _clean(q)) for q in group["Example"] if _clean(q))
    pairs = _dedupe(pairs)
    return [TaskItem(task, _item_id(i, q), q, s, source) for i, (q, s) in enumerate(pairs)]


def normalize_task_name(task: str) -> str:
    key = str(task).strip().lower()
    aliases = {"alternative_uses": "aut", "alternative-uses": "aut", "instance": "instances",
               "similarity": "similarities", "sci": "scientific", "science": "scientific"}
    key = aliases.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown creativity task {task!r}; choose from {', '.join(TASKS)}")
    return key


def builtin_task_file(task: str) -> Path:
    return Path(str(files("persona_lens.evals.creativity").joinpath("data").joinpath(f"{normalize_task_name(task)}.json")))


def find_task_file(tasks_dir: str | os.PathLike, task: str, split: str = "auto", n: int | None = None) -> Path:
    """The file for ``task`` under an LLM-Discussion ``Datasets`` folder.

    ``split`` is a suffix (``"10"``, ``"30_test"``, ``"100"``...), or ``"auto"``: the first of
    :data:`SPLITS` with at least ``n`` items (else the largest).
    """
    task = normalize_task_name(task)
    root = Path(tasks_dir)
    folder = next((p for p in (root / TASK_FOLDERS[task], root / task) if p.is_dir()), None)
    if folder is None:
        if root.is_dir() and (root / f"{task}.json").exists():  # a folder laid out like the built-in set
            return root / f"{task}.json"
        raise FileNotFoundError(f"{root} has no {TASK_FOLDERS[task]}/ folder (nor {task}.json)")
    prefix = task
    if split != "auto":
        path = folder / f"{prefix}_{split}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    candidates = [folder / f"{prefix}_{s}.json" for s in SPLITS if (folder / f"{prefix}_{s}.json").exists()]
    if not candidates:
        raise FileNotFoundError(f"{folder} holds none of {[f'{prefix}_{s}.json' for s in SPLITS]}")
    sized = [(p, len(load_task_file(task, p))) for p in candidates]
    if n is not None:
        for path, size in sized:
            if size >= n:
                return path
    return max(sized, key=lambda ps: ps[1])[0]


def load_task_file(task: str, path: str | os.PathLike, template_index: int = 0) -> list[TaskItem]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskFormatError(f"{path}: not JSON ({exc})") from None
    return parse_task_data(task, data, source=str(path), template_index=template_index)


def load_tasks(
    tasks: Sequence[str] | str = TASKS,
    *,
    n: int | None = None,
    tasks_dir: str | os.PathLike | None = None,
    split: str = "auto",
) -> dict[str, list[TaskItem]]:
    """``{task: first n items}``: the built-in set, or the LLM-Discussion files under ``tasks_dir``."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    out: dict[str, list[TaskItem]] = {}
    for task in tasks:
        key = normalize_task_name(task)
        if tasks_dir is None:
            items = parse_task_data(key, json.loads(builtin_task_file(key).read_text(encoding="utf-8")), "builtin")
        else:
            items = load_task_file(key, find_task_file(tasks_dir, key, split, n))
        out[key] = items[:n] if n is not None else items
    return out
