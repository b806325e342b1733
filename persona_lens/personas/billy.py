"""BILLY (Pai et al. 2025) in one place: its seven personas, the paper's main merged
configuration and steering setting, the role descriptions, and the one multi-role system
prompt that both the projection analysis (:mod:`persona_lens.analysis.projection`) and the
creativity eval's ``mrp`` baseline (:mod:`persona_lens.evals.creativity`) use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: the 7 built-in BILLY personas, in the order the ablation blends them (first k)
BILLY_PERSONAS = ("creative_professional", "environmentalist", "futurist", "analytical_thinker",
                  "empathetic_counselor", "startup_founder", "academic_researcher")
#: BILLY's main merged vector (the authors' config): the mean of these raw vectors (futurist twice)
PAPER_MERGE = ("creative_professional", "environmentalist", "futurist", "futurist")
#: the distinct personas of PAPER_MERGE
MERGE_PERSONAS = tuple(dict.fromkeys(PAPER_MERGE))
#: the paper's steering on Qwen2.5-7B-Instruct (28 layers): HF hidden_states[20] = our layer 19
#: (``blocks.19.hook_resid_post``), coefficient 2.0
PAPER_N_LAYERS = 28
PAPER_LAYER = 19
PAPER_ALPHA = 2.0


def paper_layer(n_layers: int) -> int:
    """BILLY's relative depth on a model with ``n_layers`` layers: HF ``hidden_states`` index
    ``round(n_layers * 20 / 28)``, i.e. our layer one below it (19 for 28 layers)."""
    return max(0, round(n_layers * (PAPER_LAYER + 1) / PAPER_N_LAYERS) - 1)


@dataclass(frozen=True)
class Role:
    key: str
    title: str  # "Environmentalist"
    specialty: str
    mission: str

    @property
    def article(self) -> str:
        return _article(self.title)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


#: persona_lens' own wording for the roles (the 7 BILLY personas).
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


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def get_role(key: str) -> Role:
    """The role of a BILLY persona (``"Creative Professional"`` and ``"creative-professional"`` work too)."""
    k = _key(key)
    if k not in ROLES:
        raise ValueError(f"unknown role {key!r}; choose from {', '.join(ROLES)}")
    return ROLES[k]


def _describe(name: str) -> str:
    role = ROLES.get(_key(name))
    if role is None:  # a persona outside BILLY's seven (e.g. a Persona Vectors trait): its name only
        words = _key(name).replace("_", " ")
        return f"{_article(words)} {words} persona"
    return f"{role.article} {role.title.lower()} (expert in {role.specialty})"


def multi_role_system_prompt(names: Sequence[str]) -> str:
    """The single-agent multi-role system prompt: one voice speaking for each distinct persona.

    BILLY's personas are described by their specialty; any other persona name by the name alone.
    """
    parts = [_describe(k) for k in dict.fromkeys(_key(n) for n in names)]
    if not parts:
        raise ValueError("multi_role_system_prompt needs at least one persona name")
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"You are a team of experts answering together: {joined}. Think about the question from each of "
            f"these perspectives in turn and combine them, so that the answer contains diverse and creative "
            f"ideas from every expert.")
