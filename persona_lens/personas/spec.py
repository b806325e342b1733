"""PersonaSpec: a trait or persona described in words, in the Persona Vectors JSON format.

The on-disk format is the one of the Persona Vectors and BILLY code releases::

    {"instruction": [{"pos": "...", "neg": "..."}, ...],   # contrastive system prompts
     "questions": ["...", ...],                              # extraction questions
     "eval_prompt": "... {question} ... {answer} ..."}       # judge template

persona_lens' own files may add ``name``, ``description``, ``eval_questions`` (held-out
questions, kept apart from the extraction ones as in the paper) and ``negative_style``
("opposite" for Persona Vectors traits, "neutral_assistant" for BILLY personas). Unknown keys
are kept in ``extra`` so a file round-trips unchanged.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PersonaSpecError
from ..io import atomic_write_text

REQUIRED_KEYS = ("instruction", "questions", "eval_prompt")
_OWN_KEYS = ("name", "description", "eval_questions", "negative_style")


class EvalPromptPlaceholderWarning(UserWarning):
    """The eval prompt lacks {question}/{answer}: judges append the question and answer."""


@dataclass(frozen=True)
class InstructionPair:
    pos: str
    neg: str


@dataclass
class PersonaSpec:
    name: str
    instruction: list[InstructionPair]
    questions: list[str]
    eval_prompt: str
    description: str = ""
    eval_questions: list[str] = field(default_factory=list)
    negative_style: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        where = f"persona spec {self.name!r}"
        if not self.instruction:
            raise PersonaSpecError(f"{where}: 'instruction' is an empty list")
        if not self.questions:
            raise PersonaSpecError(f"{where}: 'questions' is an empty list")
        for i, pair in enumerate(self.instruction):
            for side in ("pos", "neg"):
                text = getattr(pair, side)
                if not isinstance(text, str) or not text.strip():
                    raise PersonaSpecError(f"{where}: instruction[{i}].{side} is empty or not a string")
            if pair.pos.strip() == pair.neg.strip():
                raise PersonaSpecError(f"{where}: instruction[{i}] has pos equal to its neg")
        for key in ("questions", "eval_questions"):
            for i, q in enumerate(getattr(self, key)):
                if not isinstance(q, str) or not q.strip():
                    raise PersonaSpecError(f"{where}: {key}[{i}] is empty or not a string")
        if not isinstance(self.eval_prompt, str) or not self.eval_prompt.strip():
            raise PersonaSpecError(f"{where}: 'eval_prompt' is empty or not a string")

    @property
    def eval_prompt_has_placeholders(self) -> bool:
        return "{question}" in self.eval_prompt and "{answer}" in self.eval_prompt

    def format_eval_prompt(self, question: str, answer: str) -> str:
        """The judge prompt for one answer; appends Q/A when the template has no placeholders."""
        if self.eval_prompt_has_placeholders:
            # str.replace, not str.format: eval prompts contain literal braces (JSON examples).
            return self.eval_prompt.replace("{question}", question).replace("{answer}", answer)
        return f"{self.eval_prompt}\n\nQuestion: {question}\n\nAnswer: {answer}"

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: Any, name: str | None = None, *, source: str = "<dict>") -> PersonaSpec:
        if not isinstance(data, dict):
            raise PersonaSpecError(f"{source}: a persona spec must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise PersonaSpecError(f"{source}: missing required key(s) {missing}")
        instr = data["instruction"]
        if not isinstance(instr, list):
            raise PersonaSpecError(f"{source}: 'instruction' must be a list of {{pos, neg}} objects")
        pairs = []
        for i, item in enumerate(instr):
            if not isinstance(item, dict) or "pos" not in item or "neg" not in item:
                raise PersonaSpecError(f"{source}: instruction[{i}] must be an object with 'pos' and 'neg'")
            pairs.append(InstructionPair(pos=item["pos"], neg=item["neg"]))
        for key in ("questions", "eval_questions"):
            if key in data and not isinstance(data[key], list):
                raise PersonaSpecError(f"{source}: '{key}' must be a list of strings")
        spec_name = data.get("name") or name or "persona"
        extra = {k: v for k, v in data.items() if k not in REQUIRED_KEYS and k not in _OWN_KEYS}
        try:
            spec = cls(
                name=spec_name,
                instruction=pairs,
                questions=list(data["questions"]),
                eval_prompt=data["eval_prompt"],
                description=data.get("description", ""),
                eval_questions=list(data.get("eval_questions", [])),
                negative_style=data.get("negative_style"),
                extra=extra,
            )
        except PersonaSpecError as exc:
            raise PersonaSpecError(f"{source}: {exc}") from None
        if not spec.eval_prompt_has_placeholders:
            warnings.warn(
                f"{source}: eval_prompt has no {{question}}/{{answer}} placeholders; "
                "judges will append the question and answer after it",
                EvalPromptPlaceholderWarning,
                stacklevel=2,
            )
        return spec

    @classmethod
    def load(cls, path: str | os.PathLike) -> PersonaSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PersonaSpecError(f"{path}: not valid JSON ({exc})") from None
        except UnicodeDecodeError as exc:
            raise PersonaSpecError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                                   f"{exc.start})") from None
        except IsADirectoryError:
            raise PersonaSpecError(f"{path}: is a directory, not a spec file") from None
        return cls.from_dict(data, name=path.stem, source=str(path))

    def to_dict(self, *, persona_vectors_format: bool = False) -> dict[str, Any]:
        """The JSON object; ``persona_vectors_format=True`` keeps only the three upstream keys."""
        out: dict[str, Any] = {}
        if not persona_vectors_format:
            out["name"] = self.name
            if self.description:
                out["description"] = self.description
            if self.negative_style:
                out["negative_style"] = self.negative_style
        out["instruction"] = [{"pos": p.pos, "neg": p.neg} for p in self.instruction]
        out["questions"] = list(self.questions)
        if self.eval_questions and not persona_vectors_format:
            out["eval_questions"] = list(self.eval_questions)
        out["eval_prompt"] = self.eval_prompt
        if not persona_vectors_format:
            out.update(self.extra)
        return out

    def save(self, path: str | os.PathLike, *, persona_vectors_format: bool = False) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(persona_vectors_format=persona_vectors_format), indent=2, ensure_ascii=False)
        atomic_write_text(path, text + "\n")
        return path
