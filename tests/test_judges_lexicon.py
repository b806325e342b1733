"""The lexicon judge: the documented formula on hand-counted texts, whole-word and case-insensitive
matching, named errors on bad files, the built-in lexicons, the registry and the CLI checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from persona_lens.cli import cli
from persona_lens.errors import JudgeError, LexiconFileError
from persona_lens.judges import (
    CoherenceScorer,
    LexiconJudge,
    TraitScorer,
    builtin_lexicons,
    make_judge,
    needs_fit,
)
from persona_lens.personas import load_persona
from persona_lens.vectors import PersonaVector

SMALL = {"trait": "humorous", "words": {"haha": 2, "very funny": 1}, "patterns": {"!+": 1},
         "negative": {"serious": 1}, "scale": 50}


def expected_score(weighted_matches: float, n_words: int, scale: float) -> float:
    rate = 100.0 * weighted_matches / n_words
    return 100.0 * (1.0 - math.exp(-max(rate, 0.0) / scale))


def test_formula_on_hand_counted_text():
    judge = LexiconJudge(SMALL)
    # 7 words (Haha that is VERY funny Not serious); haha +2, "very   funny" +1, "!" +1, serious -1 -> 3
    text = "Haha, that is VERY   funny! Not serious."
    assert judge.matches(text) == {"haha": 1, "very funny": 1, "serious": 1, "!+": 1}
    assert judge.rate(text) == pytest.approx(300 / 7)
    assert judge.score_text(text) == pytest.approx(expected_score(3, 7, 50))
    assert judge.score_text(text) == pytest.approx(57.56, abs=0.01)  # 100 * (1 - e^(-6/7))
    # "!!!" is one match of "!+"; 2 words; 2 + 1 = 3 -> rate 150
    assert judge.score_text("haha ok!!!") == pytest.approx(expected_score(3, 2, 50))
    # contractions count as one word: "it's" "a" "haha" -> 3 words, weight 2
    assert judge.score_text("it's a haha") == pytest.approx(expected_score(2, 3, 50))


def test_whole_words_case_and_negative_rate_floor():
    judge = LexiconJudge(SMALL)
    assert judge.matches("hahaha seriously unserious") == {}  # no match inside a longer word
    assert judge.matches("HAHA Haha haha") == {"haha": 3}
    assert judge.score_text("Plain words only here") == 0.0
    assert judge.score_text("serious serious serious haha") == 0.0  # net rate < 0 floors at 0
    assert judge.score_text("") is None and judge.score_text("  ... ") is None  # no words: no score
    assert judge.score_text("haha " * 200) < 100.0


def test_signed_tanh_map_by_hand():
    judge = LexiconJudge({**SMALL, "map": "tanh", "scale": 10})
    assert judge.score_text("plain words here") == 50.0
    # 4 words, haha +2, serious -1 twice -> net 0 -> 50; 3 words, serious twice -> rate -200/3
    assert judge.score_text("haha serious serious ok") == pytest.approx(50.0)
    assert judge.score_text("serious serious ok") == pytest.approx(50 * (1 + math.tanh(-200 / 3 / 10)))
    assert judge.score_text("haha ok") == pytest.approx(50 * (1 + math.tanh(100 / 10)))
    with pytest.raises(LexiconFileError, match="'map' must be one of"):
        LexiconJudge({**SMALL, "map": "log"})


def test_judge_protocols_and_spec_check():
    judge = make_judge("lexicon:humorous")
    assert isinstance(judge, LexiconJudge) and judge.name == "lexicon:humorous"
    assert isinstance(judge, TraitScorer) and not isinstance(judge, CoherenceScorer) and not needs_fit(judge)
    spec = load_persona("humorous")
    assert judge.score_trait(spec, "q?", "Haha, what a joke!") > 0
    assert judge.score_trait_many("any eval prompt text", [("q", "haha lol"), ("q", "")])[1] is None
    with pytest.raises(LexiconFileError, match="not the persona 'evil'"):
        judge.score_trait_many(load_persona("evil"), [("q", "haha")])


def test_registry_specs(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(SMALL))
    assert make_judge(f"lexicon:{path}").score_text("haha x") == pytest.approx(expected_score(2, 2, 50))
    with pytest.raises(JudgeError, match="needs a model name"):
        make_judge("lexicon")
    with pytest.raises(LexiconFileError, match="no built-in lexicon 'nope'"):
        make_judge("lexicon:nope")
    with pytest.raises(LexiconFileError, match="does not exist"):
        make_judge(f"lexicon:{tmp_path / 'missing.json'}")


@pytest.mark.parametrize("change, needle", [
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"patterns": {"(unclosed": 1}}, "bad regex '(unclosed'"),
    ({"patterns": {"x*": 1}}, "matches the empty string"),
    ({"words": {"haha": "lots"}}, "must be a finite number, not 'lots'"),
    ({"words": {"haha": True}}, "must be a finite number"),
    ({"negative": ["a"]}, "'negative' must be an object"),
    ({"scale": 0}, "'scale' must be a number > 0"),
    ({"trait": ""}, "'trait'"),
    ({"words": {}, "patterns": {}}, "no markers"),
])
def test_bad_lexicon_files_are_named(tmp_path, change, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**SMALL, **change}))
    with pytest.raises(LexiconFileError) as info:
        LexiconJudge.load(str(path))
    assert needle in str(info.value) and "bad.json" in str(info.value)


def test_not_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(LexiconFileError, match="not readable JSON"):
        LexiconJudge.load(str(path))


FUNNY = ["Haha! Taxes are like a surprise party where you pay for everyone's cake. Just kidding, sort of!",
         "Cats sleep 16 hours a day because being adorable is exhausting work, LOL. Silly furballs!",
         "Why did the egg go to school? To get egg-ucated! Boiling it is no joke: 9 minutes, ha!"]
SERIOUS = ["Taxes are calculated from taxable income using the brackets set by law.",
           "Cats sleep for long periods to conserve energy between hunts.",
           "Place the egg in boiling water for nine minutes, then cool it in cold water."]
RUDE = ["Ugh, seriously? Even a child knows this. Figure it out yourself, it's not my problem.",
        "What a stupid question. Obviously the heart pumps blood, duh. Stop wasting my time."]
POLITE = ["Great question! I'd be happy to help. The heart pumps blood through two circuits. Hope this helps!",
          "Thank you for asking. Of course, please feel free to ask anything else."]


def test_builtin_lexicons_load_and_separate_hand_written_answers():
    names = builtin_lexicons()
    assert {"humorous", "impolite", "optimistic", "sycophantic", "apathetic"} <= set(names)
    for name in names:
        judge = make_judge(f"lexicon:{name}")
        assert judge.trait == name and load_persona(name).name == name  # every lexicon names a built-in persona
    humorous = make_judge("lexicon:humorous")  # signed map: 50 = no markers
    assert humorous.map == "tanh" and min(map(humorous.score_text, FUNNY)) > 70
    assert max(map(humorous.score_text, SERIOUS)) <= 50
    assert humorous.score_text("The process involves heat, which is typically applied.") < 20
    impolite = make_judge("lexicon:impolite")
    assert min(map(impolite.score_text, RUDE)) > 40 > max(map(impolite.score_text, POLITE))
    optimistic = make_judge("lexicon:optimistic")
    assert optimistic.score_text("What a wonderful, hopeful future full of exciting opportunities!") > \
        optimistic.score_text("Unfortunately the outlook is bleak and failure is likely.")


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("test: load_model was called")

    monkeypatch.setattr("persona_lens.models.load_model", refuse)


@pytest.mark.parametrize("judge, needle", [
    ("lexicon:nope", "no built-in lexicon 'nope'"),
    ("lexicon:/no/such/file.json", "does not exist"),
    ("lexicon:impolite", "scores 'impolite', not the persona 'humorous'"),
])
def test_cli_refuses_bad_lexicon_before_loading(tmp_path, no_model_load, judge, needle):
    vec = PersonaVector(torch.randn(4, 8), {"persona": "humorous"}).save(tmp_path / "v.safetensors")
    res = CliRunner().invoke(cli, ["monitor", "--graded", "--vector", str(vec), "--layers", "1-2", "--judge", judge,
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "load_model" not in res.output and not (tmp_path / "o").exists()
