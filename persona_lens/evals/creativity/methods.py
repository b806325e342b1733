"""The compared methods. All use the same model, the same ``max_new_tokens`` per call, and
recorded sampling seeds; every call's prompt and generated tokens are counted.

* ``sa`` — single agent, the task prompt alone, temperature 0.7;
* ``sa_t1`` — the same at temperature 1.0;
* ``mrp`` — multi-role prompting: one call whose system prompt asks the model to answer as a
  team of the discussion's personas;
* ``discussion`` — LLM-Discussion-style role-play (Lu et al. 2024) with the same model: N role
  agents (default environmentalist, creative professional, futurist, futurist) and R rounds
  (default 3). Round 1: each agent answers the task in its role. Round r > 1: each agent sees the
  other agents' answers from round r - 1 and updates its own; the last round asks it to finalize
  a numbered list. Each agent keeps its own chat history (prompt tokens grow with the rounds),
  so a query costs N x R calls. The final answer (``final=``): ``"agents"`` (default, as
  LLM-Discussion evaluates: each agent's last-round list is scored and the scores averaged),
  ``"merged"`` (the unique ideas of all last-round lists, as one list) or ``"first"`` (the first
  agent's last-round list);
* ``billy`` — BILLY: one call, no system prompt, the merged persona vector added at one layer
  (``Steering.from_vector(merged, layer, alpha)``);
* ``single:NAME`` — the same with one persona vector.

Agents of one round are independent (they read the previous round), so a round runs as one
batched generation over items x agents; single-call methods batch over items. Wall time is the
batch's wall time shared equally among its rows (use ``batch_size=1`` for unbatched latency).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Sequence

from .parse import normalize_idea, parse_ideas
from .tasks import LIST_INSTRUCTION, TaskItem


@dataclass(frozen=True)
class Role:
    key: str
    title: str  # "Environmentalist"
    specialty: str
    mission: str

    @property
    def article(self) -> str:
        return "an" if self.title[:1].lower() in "aeiou" else "a"


#: persona_lens' own wording for the role agents (the 7 BILLY personas).
ROLES: dict[str, Role] = {
    "environmentalist": Role(
        "environmentalist", "Environmentalist", "sustainability and the health of the natural world",
        "You push the group towards ideas that reuse, repair and protect the planet, and you point out the "
        "environmental side of every suggestion."),
    "creative_professional": Role(
        "creative_professional", "Creative Professional", "art, design, storytelling and emotion",
        "You bring an artist's eye to the group: you look for ideas that are expressive, beautiful or "
        "surprising and that move people."),
    "futurist": Role(
        "futurist", "Futurist", "emerging technologies and scenarios of the future",
        "You make the group think decades ahead: how new technologies could change each idea and which "
        "bold possibilities the future opens."),
    "analytical_thinker": Role(
        "analytical_thinker", "Analytical Thinker", "logic, evidence and careful reasoning",
        "You break the problem into parts, test each idea against the facts and look for clever solutions "
        "that others overlook."),
    "empathetic_counselor": Role(
        "empathetic_counselor", "Empathetic Counselor", "people's feelings, wellbeing and relationships",
        "You ask how each idea would help people feel better, connect with each other or cope with "
        "difficulties."),
    "startup_founder": Role(
        "startup_founder", "Startup Founder", "products, customers and scaling a business",
        "You turn ideas into products people would pay for and ask who the customer is and how it could "
        "grow."),
    "academic_researcher": Role(
        "academic_researcher", "Academic Researcher", "theory, experiments and scholarly knowledge",
        "You connect ideas to what research knows, propose hypotheses and suggest ways to test them."),
}
DEFAULT_ROLES = ("environmentalist", "creative_professional", "futurist", "futurist")
#: BILLY's main merged vector (the authors' config): creative_professional + environmentalist + 2 x futurist
DEFAULT_MERGE = ("creative_professional", "environmentalist", "futurist", "futurist")
#: the 7 built-in BILLY personas, in the order the ablation blends them (first k)
BILLY_PERSONAS = ("creative_professional", "environmentalist", "futurist", "analytical_thinker",
                  "empathetic_counselor", "startup_founder", "academic_researcher")

DISCUSSION_PROMPT = ("Your teammates come from different backgrounds, so make your contribution as varied and "
                     "creative as you can.")
LAST_ROUND_PROMPT = ("This is the last round of the discussion: finalize and present your final list of as many "
                     "creative answers as possible.")


def get_role(key: str) -> Role:
    k = key.strip().lower().replace("-", "_").replace(" ", "_")
    if k not in ROLES:
        raise ValueError(f"unknown discussion role {key!r}; choose from {', '.join(ROLES)}")
    return ROLES[k]


def multi_role_system_prompt(role_keys: Sequence[str]) -> str:
    """The ``mrp`` system prompt: one voice speaking for the (unique) personas."""
    roles = [get_role(k) for k in dict.fromkeys(role_keys)]
    parts = [f"{r.article} {r.title.lower()} (expert in {r.specialty})" for r in roles]
    names = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"You are a team of experts answering together: {names}. Think about the question from each of "
            f"these perspectives in turn and combine them, so that the answer contains diverse and creative "
            f"ideas from every expert.")


def role_prompt(role: Role) -> str:
    return (f"You are {role.article} {role.title}, whose specialty is {role.specialty}. {role.mission} "
            f"Begin your reply by stating your role. ")


def _stable_seed(*parts) -> int:
    return int(hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


@dataclass
class MethodOutput:
    text: str
    idea_lists: list[list[str]]
    calls: int
    prompt_tokens: int
    gen_tokens: int
    wall_s: float
    extra: dict = field(default_factory=dict)


class Method:
    name: str = "method"
    kind: str = "single"
    temperature: float = 0.7

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "temperature": self.temperature}

    def run(self, model, items: Sequence[TaskItem], *, seed: int, max_new_tokens: int,
            batch_size: int) -> list[MethodOutput]:  # pragma: no cover - abstract
        raise NotImplementedError


class SingleCall(Method):
    """One call per item: optional system prompt, optional steering."""

    def __init__(self, name: str, *, temperature: float = 0.7, system: str | None = None, steering=None,
                 info: dict | None = None, kind: str = "single"):
        self.name, self.temperature, self.system, self.steering = name, float(temperature), system, steering
        self.kind = kind
        self.info = dict(info or {})

    def describe(self) -> dict:
        d = {**super().describe(), **self.info}
        if self.system:
            d["system"] = self.system
        return d

    def run(self, model, items, *, seed, max_new_tokens, batch_size):
        from ...chat import make_messages
        from ...generate import generate_ids

        prompts = [make_messages(it.prompt, self.system) for it in items]
        t0 = time.perf_counter()
        gens = generate_ids(model, prompts, max_new_tokens=max_new_tokens, temperature=self.temperature,
                            seed=seed, batch_size=batch_size, steering=self.steering, progress=False,
                            desc=self.name)
        share = (time.perf_counter() - t0) / max(1, len(items))
        return [MethodOutput(g.text, [parse_ideas(g.text)], 1, len(g.prompt_ids), len(g.response_ids), share)
                for g in gens]


class Discussion(Method):
    kind = "discussion"

    def __init__(self, name: str = "discussion", *, roles: Sequence[str] = DEFAULT_ROLES, rounds: int = 3,
                 temperature: float = 0.7, final: str = "agents"):
        if rounds < 1:
            raise ValueError("a discussion needs at least one round")
        if final not in ("agents", "merged", "first"):
            raise ValueError("final must be 'agents', 'merged' or 'first'")
        self.name, self.temperature, self.rounds, self.final = name, float(temperature), int(rounds), final
        self.roles = [get_role(r) for r in roles]
        if not self.roles:
            raise ValueError("a discussion needs at least one role")

    def describe(self) -> dict:
        return {**super().describe(), "roles": [r.key for r in self.roles], "rounds": self.rounds,
                "agents": len(self.roles), "final": self.final}

    def _user_message(self, item: TaskItem, agent: int, round_index: int, latest: list[str]) -> str:
        role = self.roles[agent]
        if round_index == 0:
            body = (f"Start a discussion with your teammates to complete this task together: {item.prompt} "
                    f"{DISCUSSION_PROMPT}")
        else:
            others = "".join(f"{self.roles[j].title} (agent {j + 1}): ```{latest[j]}```\n"
                             for j in range(len(self.roles)) if j != agent)
            body = (f"These are the latest answers of the other agents:\n{others}\n{item.question} "
                    f"{DISCUSSION_PROMPT} Build on, combine or improve their ideas and add new ones.")
            if round_index == self.rounds - 1:
                body += f" {LAST_ROUND_PROMPT}"
            body += f" {LIST_INSTRUCTION}"
        return role_prompt(role) + body

    def run(self, model, items, *, seed, max_new_tokens, batch_size):
        from ...generate import generate_ids

        n_agents = len(self.roles)
        histories = [[[] for _ in range(n_agents)] for _ in items]  # [item][agent] -> messages
        latest = [["" for _ in range(n_agents)] for _ in items]
        stats = [{"calls": 0, "prompt_tokens": 0, "gen_tokens": 0, "wall_s": 0.0} for _ in items]
        transcripts: list[list[dict]] = [[] for _ in items]
        for r in range(self.rounds):
            prompts, index = [], []
            for i, item in enumerate(items):
                for a in range(n_agents):
                    histories[i][a].append({"role": "user", "content": self._user_message(item, a, r, latest[i])})
                    prompts.append(list(histories[i][a]))
                    index.append((i, a))
            t0 = time.perf_counter()
            gens = generate_ids(model, prompts, max_new_tokens=max_new_tokens, temperature=self.temperature,
                                seed=_stable_seed(seed, "round", r), batch_size=batch_size, progress=False,
                                desc=f"{self.name} round {r + 1}")
            share = (time.perf_counter() - t0) / max(1, len(prompts))
            new_latest = [list(row) for row in latest]
            for (i, a), g in zip(index, gens):
                histories[i][a].append({"role": "assistant", "content": g.text})
                new_latest[i][a] = g.text
                st = stats[i]
                st["calls"] += 1
                st["prompt_tokens"] += len(g.prompt_ids)
                st["gen_tokens"] += len(g.response_ids)
                st["wall_s"] += share
                transcripts[i].append({"round": r + 1, "agent": a + 1, "role": self.roles[a].key,
                                       "prompt_tokens": len(g.prompt_ids), "gen_tokens": len(g.response_ids),
                                       "text": g.text})
            latest = new_latest
        outputs = []
        for i in range(len(items)):
            finals = latest[i]
            per_agent = [parse_ideas(t) for t in finals]
            if self.final == "agents":
                lists = per_agent
            elif self.final == "first":
                lists = [per_agent[0]]
            else:
                seen, merged = set(), []
                for ideas in per_agent:
                    for idea in ideas:
                        k = normalize_idea(idea)
                        if k and k not in seen:
                            seen.add(k)
                            merged.append(idea)
                lists = [merged]
            text = "\n\n".join(f"[{self.roles[a].title} (agent {a + 1})]\n{t}" for a, t in enumerate(finals))
            st = stats[i]
            outputs.append(MethodOutput(text, lists, st["calls"], st["prompt_tokens"], st["gen_tokens"],
                                        st["wall_s"], {"transcript": transcripts[i], "final_texts": finals}))
        return outputs
