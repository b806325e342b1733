"""Idea parsing on messy, realistic model outputs (numbered, bulleted, bold, prose, discussions)."""

from __future__ import annotations

import pytest

from persona_lens.evals.creativity.parse import clean_idea, normalize_idea, parse_ideas

# --- actual SmolLM2-135M-Instruct outputs (from `persona-lens eval creativity`, T=0.7/1.0, 48-64 new
# tokens, so often cut mid-item) ------------------------------------------------------------------------
SMOL_PROSE = """The idea of a unique tool that plays tricks on the mind, of being a tool that is used to think outside of the box, and is often used to make people think creatively.

The idea of using a creative, yet functional, tool to help you think creatively.

The idea of utilizing a tool"""

SMOL_SA_TRUNCATED = ('1. Use a shoelace as a makeshift "map"\n2. Create a shoebox out of a shoelace\n'
                     '3. Create a shoebox with the bottom cut off half\n4. Use a shoel')
SMOL_T1_PREAMBLE = ('Here are 28 ideas suggesting creative uses for an ice cube tray and one index:\n1. Karaoke venue: '
                    'Offer an ice cube tray as a work of art in a ring.\n\n Original: "My dame\'s')
SMOL_T1_PREAMBLE_ONLY = ("This list will provide an endless list of ideas to illustrate various creative uses for a "
                         "cardboard box. Here's a list of creative ideas inspired by constructivism's dialectic:")
SMOL_MRP_BOLD_DANGLING = ('1. **Low-Cost Home Remodeling and Creating Custom Furniture**\n2. **DIY Forums and Social Media**'
                          '\n3. **Art and Deco Design**\n4. **Creating Productivity**\n5')
SMOL_DISCUSSION_ECHO = ("I'm excited to share the latest ideas and milestones with the team.\n\nHere's a fresh perspective, "
                        "and I'm ready to tackle the possibilities.\n\nYour response is 1.\nFuturist (agent 6):")
SMOL_DISCUSSION_BROKEN_FIRST = ("(3. *list)\n2. Sustainable fashion\n3. Sustainable business solutions\n"
                                "4. Sustainable living practices\n5. Sustainable living options\n6.")
SMOL_BILLY_QUOTE = ('1. "The most fundamental and fundamental." This refers to how the universe is fundamentally '
                    'different from an abstract concept.\nThe most fundamental and fundamental is a duality')

NUMBERED_BOLD_TRUNCATED = """Here are some creative uses for a cardboard box:

1. **Cat castle**: Cut windows and doors into the box and let your cat explore.
2. **Time capsule**: Fill the box with letters and bury it in the garden.
3. **Puppet theater**: Cut a
"""

BOLD_HEADERS = """Sure! Here are some creative uses for a tennis ball:

**1. Furniture glides**
Cut a slit and put it on chair legs so they slide quietly.

**2. Massage tool**
Roll it under your foot to relax sore muscles.

**3. Dog toy**
Throw it for your dog.

I hope these ideas inspire you!"""

BULLETS_WITH_SECTIONS = """As an Environmentalist, I believe we should reuse bubble wrap rather than throw it away.

**Around the house:**
- Insulate windows in winter
• Line drawers to protect glasses
* Make a stress-relief popping board

**Outdoors:**
– Protect plants from frost
+ Cushion a picnic seat

These ideas reduce plastic waste and are fun!"""

PARENS_AND_IDEA_LABELS = """(1) Use an egg carton as a seed starter tray.
(2) Sort beads, screws and buttons.
Idea 3: Paint it to make a caterpillar toy.
4) Freeze small portions of pesto in it.
5 - Build a mini pinata."""

INLINE_NUMBERED = "Uses for a shoelace: 1. a bookmark 2. a belt for a doll 3. a plant tie 4. a measuring string"

DISCUSSION_FINAL = """As a Futurist, I appreciate my teammates' suggestions. Building on the Environmentalist's idea of composting:

1. Smart compost sensor housing
2. Drone landing pad

After discussing with the team, here is our final list:

1. **Solar oven**: line the box with foil to cook with sunlight.
2. **Seed library**: a neighbourhood box to swap seeds.
3. **VR headset**: fold it into a phone-based viewer.

This final list combines environmental and technological perspectives."""

NESTED_SUBBULLETS = """Here are ideas for an ice cube tray:

1. Paint palette
   - Each compartment holds a different colour.
   - Easy to rinse.
2. Herb cubes
   - Freeze chopped herbs in olive oil.

3. Jewelry organizer

Let me know if you want more ideas!"""

ONE_PER_LINE = """Ways a river and a road are alike:
Both carry things from one place to another
Both can flood or be blocked
Both have bridges
People follow both to find towns"""

MARKDOWN_HEADINGS = """### 1. A hula hoop garden bed
Lay it on the ground and plant flowers inside.

### 2. Hoop curtain rod
Hang fabric around it for a reading nook.

### Conclusion
A hula hoop is versatile."""


@pytest.mark.parametrize(
    "text, expected",
    [
        (SMOL_PROSE, [
            "The idea of a unique tool that plays tricks on the mind, of being a tool that is used to think outside "
            "of the box, and is often used to make people think creatively.",
            "The idea of using a creative, yet functional, tool to help you think creatively.",
            "The idea of utilizing a tool",
        ]),
        (SMOL_SA_TRUNCATED, ['Use a shoelace as a makeshift "map"', "Create a shoebox out of a shoelace",
                             "Create a shoebox with the bottom cut off half", "Use a shoel"]),
        (SMOL_T1_PREAMBLE, ['Karaoke venue: Offer an ice cube tray as a work of art in a ring. Original: "My dame\'s']),
        (SMOL_T1_PREAMBLE_ONLY, []),
        (SMOL_MRP_BOLD_DANGLING, ["Low-Cost Home Remodeling and Creating Custom Furniture", "DIY Forums and Social Media",
                                  "Art and Deco Design", "Creating Productivity"]),
        (SMOL_DISCUSSION_ECHO, ["I'm excited to share the latest ideas and milestones with the team.",
                                "Here's a fresh perspective, and I'm ready to tackle the possibilities.",
                                "Your response is 1."]),
        (SMOL_DISCUSSION_BROKEN_FIRST, ["Sustainable fashion", "Sustainable business solutions",
                                        "Sustainable living practices", "Sustainable living options"]),
        (SMOL_BILLY_QUOTE, ['"The most fundamental and fundamental." This refers to how the universe is fundamentally '
                            'different from an abstract concept. The most fundamental and fundamental is a duality']),
        (NUMBERED_BOLD_TRUNCATED, [
            "Cat castle: Cut windows and doors into the box and let your cat explore.",
            "Time capsule: Fill the box with letters and bury it in the garden.",
            "Puppet theater: Cut a",
        ]),
        (BOLD_HEADERS, [
            "Furniture glides Cut a slit and put it on chair legs so they slide quietly.",
            "Massage tool Roll it under your foot to relax sore muscles.",
            "Dog toy Throw it for your dog.",
        ]),
        (BULLETS_WITH_SECTIONS, [
            "Insulate windows in winter",
            "Line drawers to protect glasses",
            "Make a stress-relief popping board",
            "Protect plants from frost",
            "Cushion a picnic seat",
        ]),
        (PARENS_AND_IDEA_LABELS, [
            "Use an egg carton as a seed starter tray.",
            "Sort beads, screws and buttons.",
            "Paint it to make a caterpillar toy.",
            "Freeze small portions of pesto in it.",
            "Build a mini pinata.",
        ]),
        (INLINE_NUMBERED, ["a bookmark", "a belt for a doll", "a plant tie", "a measuring string"]),
        (DISCUSSION_FINAL, [
            "Solar oven: line the box with foil to cook with sunlight.",
            "Seed library: a neighbourhood box to swap seeds.",
            "VR headset: fold it into a phone-based viewer.",
        ]),
        (NESTED_SUBBULLETS, [
            "Paint palette Each compartment holds a different colour. Easy to rinse.",
            "Herb cubes Freeze chopped herbs in olive oil.",
            "Jewelry organizer",
        ]),
        (ONE_PER_LINE, [
            "Both carry things from one place to another",
            "Both can flood or be blocked",
            "Both have bridges",
            "People follow both to find towns",
        ]),
        (MARKDOWN_HEADINGS, [
            "A hula hoop garden bed Lay it on the ground and plant flowers inside.",
            "Hoop curtain rod Hang fabric around it for a reading nook.",
        ]),
    ],
    ids=["smol-prose", "smol-sa-truncated", "smol-t1-preamble", "smol-t1-preamble-only", "smol-mrp-bold-dangling",
         "smol-discussion-echo", "smol-discussion-broken-first", "smol-billy-quote",
         "numbered-bold-truncated", "bold-headers", "bullets-sections", "parens-labels",
         "inline-numbered", "discussion-final", "nested-subbullets", "one-per-line", "md-headings"],
)
def test_parse_messy_outputs(text, expected):
    assert parse_ideas(text) == expected


def test_final_section_can_be_disabled():
    ideas = parse_ideas(DISCUSSION_FINAL, final_section=False)
    assert ideas[:2] == ["Smart compost sensor housing", "Drone landing pad"]
    assert len(ideas) == 5


def test_empty_and_preamble_only():
    assert parse_ideas("") == []
    assert parse_ideas(None) == []
    assert parse_ideas("Here are some ideas:\n\n") == []


def test_numbers_inside_text_are_not_markers():
    text = "1. Use 2.5 liters of water to test buoyancy\n2. Measure 10 cm of growth per week"
    assert parse_ideas(text) == ["Use 2.5 liters of water to test buoyancy", "Measure 10 cm of growth per week"]


def test_numbered_section_headers_over_bullets():
    text = ("1. Household uses:\n- Door stop\n- Plant pot\n2. Art uses:\n- Mosaic tiles\n- Stencil\n")
    assert parse_ideas(text) == ["Door stop", "Plant pot", "Mosaic tiles", "Stencil"]


def test_clean_and_normalize():
    assert clean_idea("  **Bird feeder**:  hang it  ") == "Bird feeder: hang it"
    assert clean_idea('"A quoted idea"') == "A quoted idea"
    assert normalize_idea("Bird-feeder!!") == normalize_idea("bird feeder")
