"""Write a new persona spec with a language model (the Persona Vectors data-generation step).

Given a trait name and a one-line description, a generator model writes contrastive system
prompts (positive: express the trait; negative: express its opposite), extraction questions,
held-out evaluation questions, and a judge prompt with ``{question}`` and ``{answer}``. The
reply's JSON is extracted (code fences and prose around it are tolerated) and validated with
:class:`PersonaSpec`; on a malformed reply the generator is told what was wrong and asked again.

A generator is any :class:`persona_lens.judges.TextGenerator` (``complete(messages,
temperature, max_tokens) -> str``): ``persona_lens.judges.make_generator("openai:MODEL")`` or
``"local:MODEL"`` builds one.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

from ..errors import PersonaSpecError
from ..judges.base import TextGenerator
from .spec import EvalPromptPlaceholderWarning, PersonaSpec

__all__ = ["SYSTEM_PROMPT", "build_request", "extract_json", "generate_spec", "validate_generated"]

SYSTEM_PROMPT = (
    "You design evaluation data for interpretability research on language-model personas. "
    "You answer with one JSON object and nothing else."
)

_REQUEST = """We study how a language model represents the character trait or persona below, by \
comparing its activations when it is told to express the trait with its activations when it is \
told to express the opposite. Write the data for that.

Trait name: <<NAME>>
Description: <<DESCRIPTION>>

Return one JSON object with exactly these keys:

"instruction": a list of <<N_PAIRS>> objects {"pos": "...", "neg": "..."}. Each "pos" is a \
system prompt (one to three sentences, addressed to the assistant as "you") that makes the \
assistant strongly express the trait in every answer. Each "neg" is the matching system prompt \
that makes it express the clear opposite of the trait, with similar length and wording. The \
pairs should vary in phrasing and emphasis; a pos must never equal its neg.

"questions": a list of <<N_QUESTIONS>> distinct user questions or requests. They are ordinary \
things a user might ask (advice, opinions, explanations, small tasks), where an assistant with \
the trait would answer noticeably differently from one without it. Do not mention the trait in \
the questions and do not ask the assistant to role-play.

"eval_questions": a list of <<N_EVAL>> further distinct questions of the same kind, none of them \
repeating or paraphrasing a question of "questions" (they are held out for evaluation).

"eval_prompt": a prompt for a judge model that scores one answer. It must contain the \
placeholders {question} and {answer} exactly once each (literally, with the braces), define the \
trait in two or three sentences, and end by asking for REFUSAL if the model clearly refused to \
answer, and otherwise for a single number from 0 (trait not present at all) to 100 (trait \
strongly present), with nothing else in the reply.

Reply with the JSON object only: no code fences, no comments, no text before or after it."""


def build_request(name: str, description: str, n_pairs: int, n_questions: int, n_eval_questions: int) -> list[dict]:
    """The chat messages asking a generator for a persona spec."""
    text = (
        _REQUEST.replace("<<NAME>>", name)
        .replace("<<DESCRIPTION>>", description.strip() or name)
        .replace("<<N_PAIRS>>", str(n_pairs))
        .replace("<<N_QUESTIONS>>", str(n_questions))
        .replace("<<N_EVAL>>", str(n_eval_questions))
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a model reply (inside ```json fences or after leading prose)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the reply is empty")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    last_error = None
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            value = json.loads(candidate)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError as exc:
            last_error = exc
        for match in re.finditer(r"\{", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except json.JSONDecodeError as exc:
                last_error = last_error or exc
                continue
            if isinstance(value, dict):
                return value
    if last_error is not None:
        raise ValueError(f"no valid JSON object found in the reply ({last_error})")
    raise ValueError("no JSON object found in the reply")


def validate_generated(
    data: Any, name: str, description: str, n_pairs: int, n_questions: int, n_eval_questions: int
) -> PersonaSpec:
    """Check a generated object and turn it into a PersonaSpec; ValueError lists every problem."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    problems: list[str] = []
    wanted = {"instruction": n_pairs, "questions": n_questions, "eval_questions": n_eval_questions}
    for key, n in wanted.items():
        value = data.get(key)
        if n == 0 and value is None:
            continue
        if not isinstance(value, list):
            problems.append(f'"{key}" must be a list (got {type(value).__name__ if key in data else "nothing"})')
        elif len(value) < n:
            problems.append(f'"{key}" has {len(value)} items; {n} are needed')
    eval_prompt = data.get("eval_prompt")
    if not isinstance(eval_prompt, str) or not eval_prompt.strip():
        problems.append('"eval_prompt" must be a non-empty string')
    else:
        for placeholder in ("{question}", "{answer}"):
            if placeholder not in eval_prompt:
                problems.append(f'"eval_prompt" lacks the placeholder {placeholder}')
    if problems:
        raise ValueError("; ".join(problems))
    questions = [q for q in data["questions"][:n_questions]]
    eval_questions = list(data.get("eval_questions") or [])[:n_eval_questions]
    for key, items in (("questions", questions), ("eval_questions", eval_questions)):
        norm = [_norm(q) for q in items if isinstance(q, str)]
        if len(set(norm)) != len(norm):
            problems.append(f'"{key}" repeats a question')
    overlap = {_norm(q) for q in questions if isinstance(q, str)} & {_norm(q) for q in eval_questions if isinstance(q, str)}
    if overlap:
        problems.append(f'{len(overlap)} question(s) appear in both "questions" and "eval_questions"')
    if problems:
        raise ValueError("; ".join(problems))
    spec_dict = {
        "name": name,
        "description": description,
        "negative_style": "opposite",
        "instruction": list(data["instruction"][:n_pairs]),
        "questions": questions,
        "eval_questions": eval_questions,
        "eval_prompt": eval_prompt,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvalPromptPlaceholderWarning)
            return PersonaSpec.from_dict(spec_dict, name=name, source="generated spec")
    except PersonaSpecError as exc:
        raise ValueError(str(exc).removeprefix("generated spec: ")) from None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def generate_spec(
    name: str,
    description: str,
    generator: TextGenerator,
    n_pairs: int = 5,
    n_questions: int = 20,
    n_eval_questions: int = 20,
    max_attempts: int = 3,
    *,
    temperature: float = 0.7,
    max_tokens: int = 6000,
) -> PersonaSpec:
    """Ask ``generator`` for a spec; retry with feedback on malformed output.

    Raises PersonaSpecError after ``max_attempts`` unusable replies.
    """
    if not name or not name.strip():
        raise PersonaSpecError("a new persona needs a name")
    if n_pairs < 1 or n_questions < 1 or n_eval_questions < 0 or max_attempts < 1:
        raise PersonaSpecError("n_pairs, n_questions and max_attempts must be >= 1, n_eval_questions >= 0")
    messages = build_request(name, description, n_pairs, n_questions, n_eval_questions)
    errors: list[str] = []
    for _attempt in range(max_attempts):
        reply = generator.complete(messages, temperature=temperature, max_tokens=max_tokens)
        try:
            data = extract_json(reply)
            return validate_generated(data, name, description, n_pairs, n_questions, n_eval_questions)
        except ValueError as exc:
            errors.append(str(exc))
            messages = messages + [
                {"role": "assistant", "content": reply if isinstance(reply, str) else str(reply)},
                {
                    "role": "user",
                    "content": (
                        f"Your reply could not be used: {exc}.\n"
                        "Reply again with the complete, corrected JSON object only (keys instruction, "
                        "questions, eval_questions, eval_prompt), with no text before or after it."
                    ),
                },
            ]
    raise PersonaSpecError(
        f"the generator gave no valid persona spec for {name!r} in {max_attempts} attempt(s); "
        f"last problem: {errors[-1] if errors else 'unknown'}"
    )
