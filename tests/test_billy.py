"""persona_lens.personas.billy: the paper's constants (against Pai et al. 2025) and their single use."""

from persona_lens import demo
from persona_lens.analysis import projection
from persona_lens.evals.creativity import builders, config, methods
from persona_lens.personas import billy, builtin_names


def test_paper_constants():
    assert billy.BILLY_PERSONAS == ("creative_professional", "environmentalist", "futurist", "analytical_thinker",
                                    "empathetic_counselor", "startup_founder", "academic_researcher")
    assert set(billy.BILLY_PERSONAS) <= set(builtin_names()) and set(billy.ROLES) == set(billy.BILLY_PERSONAS)
    assert billy.PAPER_MERGE == ("creative_professional", "environmentalist", "futurist", "futurist")
    assert billy.MERGE_PERSONAS == ("creative_professional", "environmentalist", "futurist")
    # Qwen2.5-7B-Instruct (28 decoder layers): HF hidden_states[20] = output of decoder layer 19 = our layer 19
    assert (billy.PAPER_N_LAYERS, billy.PAPER_LAYER, billy.PAPER_ALPHA) == (28, 19, 2.0)
    assert billy.paper_layer(28) == 19
    assert billy.paper_layer(30) == round(30 * 20 / 28) - 1 == 20
    assert billy.paper_layer(1) == 0


def test_one_definition_used_everywhere():
    assert builders.BILLY_PERSONAS is billy.BILLY_PERSONAS
    assert config.CreativityConfig.__dataclass_fields__["personas"].default is billy.PAPER_MERGE
    assert demo.DemoConfig.__dataclass_fields__["personas"].default is billy.MERGE_PERSONAS
    assert methods.get_role is billy.get_role and methods.Role is billy.Role
    assert projection.multi_role_system_prompt is billy.multi_role_system_prompt
    assert builders.multi_role_system_prompt is billy.multi_role_system_prompt


def test_multi_role_prompt_wording():
    text = billy.multi_role_system_prompt(["Environmentalist", "creative-professional", "futurist", "futurist"])
    assert text == ("You are a team of experts answering together: an environmentalist (expert in sustainability "
                    "and the health of the natural world), a creative professional (expert in art, design, "
                    "storytelling and emotion) and a futurist (expert in emerging technologies and scenarios of "
                    "the future). Think about the question from each of these perspectives in turn and combine "
                    "them, so that the answer contains diverse and creative ideas from every expert.")
