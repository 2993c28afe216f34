"""Issue 11: the User LM guardrails hold as paper appendix D.1 specifies.

A turn is generated again until it passes; when the budget runs out the *best* candidate is
kept (an over-long one cut back at a sentence end), never the last one as it came; and a user
never ends a conversation before its first turn. Fast tests drive the shared retry loop with
scripted generations; slow ones use the embedded model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import pytest

import userlm_env  # noqa: F401  (registers the env ids)
from simulators.guardrails import TurnChecks, count_words, cut_to_sentence, earlier_texts
from simulators.sampling import Generation, UserLMBaseConfig, respond_with_retries, vet
from simulators.userlm import UserLMSimulator
from userlm_env.core import ConversationCore, SimulatorError
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model
from userlm_env.types import END_MARKER, ConversationState, Intent, Shard, UserTurn

INTENT = Intent(
    "gsm8k",
    "toy/muffins",
    "A bakery sells 14 muffins in the morning and 9 in the afternoon. How many in total?",
    (Shard(1, "How many muffins in total?"), Shard(2, "14 in the morning, 9 later.")),
)
OK = "how many muffins in total then"
SHORT = "muffins total"  # 2 words: one under the bound
RAMBLE = " ".join(["muffins"] * 30)  # 30 words, no sentence end
BANNED = "I need the muffin total please"
LONG_CUTTABLE = "Need help with a muffin sum. " + " ".join(["then"] * 30)
HISTORY = [
    {"role": "user", "content": "need help with muffins"},
    {"role": "assistant", "content": "Sure, what about them?"},
]


class _Scripted:
    """A backend answering try ``k`` of the state with seed ``s`` from ``script[s][k]``."""

    def __init__(self, script: dict[int, Sequence[str]]) -> None:
        self.script = script
        self.calls: list[list[int]] = []  # the seeds of each call

    def __call__(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        self.calls.append([state.seed for state in states])
        return [Generation(self.script[state.seed][attempt]) for state in states]


def _respond(script: dict[int, Sequence[str]], **config: Any) -> tuple[list[UserTurn], _Scripted]:
    backend = _Scripted(script)
    states = [ConversationState(INTENT, seed=seed, messages=list(HISTORY)) for seed in script]
    tries = max(len(outputs) for outputs in script.values())
    turns = respond_with_retries(states, backend, UserLMBaseConfig(max_tries=tries, **config))
    return turns, backend


# --- best candidate, not last (scripted) ------------------------------------------------------


def test_the_best_candidate_is_kept_not_the_last() -> None:
    turns, _ = _respond({0: [SHORT, RAMBLE, BANNED]})
    assert (turns[0].text, turns[0].metadata["guardrail_failed"]) == (SHORT, "too_short")
    assert turns[0].metadata["tries"] == 3
    last, _ = _respond({0: [SHORT, RAMBLE, BANNED]}, fallback="last")  # the old behaviour
    assert (last[0].text, last[0].metadata["guardrail_failed"]) == (BANNED, "banned_first_word")


def test_a_passing_turn_always_beats_every_fallback() -> None:
    turns, backend = _respond({0: [LONG_CUTTABLE, SHORT, OK, RAMBLE]})
    assert turns[0].text == OK and turns[0].metadata["tries"] == 3
    assert "guardrail_failed" not in turns[0].metadata and len(backend.calls) == 3


def test_an_over_long_turn_is_cut_at_a_sentence_end_and_kept_when_it_passes() -> None:
    turns, _ = _respond({0: [RAMBLE, LONG_CUTTABLE, SHORT]})
    turn = turns[0]
    assert turn.text == "Need help with a muffin sum." and turn.metadata["cut_to_sentence"]
    assert "guardrail_failed" not in turn.metadata and turn.metadata["raw"] == LONG_CUTTABLE
    assert turn.metadata["tries"] == 3  # a cut is a fallback: the budget was spent first


def test_an_over_long_turn_without_a_sentence_end_stays_a_flagged_fallback() -> None:
    turns, _ = _respond({0: [RAMBLE, BANNED]})
    assert (turns[0].text, turns[0].metadata["guardrail_failed"]) == (RAMBLE, "too_long")
    assert "cut_to_sentence" not in turns[0].metadata


def test_a_cut_that_breaks_another_rule_is_flagged_with_that_rule() -> None:
    copied = _respond({0: [INTENT.instruction + " " + RAMBLE]})[0][0]  # the cut copies the intent
    assert (copied.text, copied.metadata["guardrail_failed"]) == (INTENT.instruction, "repeat")
    assert copied.metadata["cut_to_sentence"]
    tiny = _respond({0: ["Hi. " + RAMBLE]})[0][0]
    assert (tiny.text, tiny.metadata["guardrail_failed"]) == ("Hi.", "too_short")
    assert tiny.metadata["cut_to_sentence"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_fallback_ranking_does_not_depend_on_the_order_of_tries(order: tuple[int, ...]) -> None:
    # best first: length violation near the bounds, far from them, banned word, repeat
    ranked = [SHORT, RAMBLE, BANNED, HISTORY[0]["content"]]
    turns, _ = _respond({0: [ranked[i] for i in order]})
    assert turns[0].text == SHORT


def test_the_ranking_order() -> None:
    checks, earlier = TurnChecks(), ["need help with muffins", INTENT.instruction]
    best_first = (
        "Need help with a muffin sum.",  # passes (what a sentence cut may give)
        SHORT,  # a length violation, 1 word under
        " ".join(["muffins"] * 27),  # 2 words over
        RAMBLE,  # 5 words over
        BANNED,  # a banned opening word
        "I " + " ".join(["muffins"] * 30),  # banned and over-long: ranked as banned
        "need help with muffins",  # a verbatim repeat
    )
    quality = [checks.fallback_quality(text, earlier) for text in best_first]
    assert quality == sorted(quality, reverse=True) and len(set(quality)) == len(quality)
    tight = TurnChecks(max_words=5)  # the intent is now too long *and* a repeat: the worst wins
    assert tight.broken(INTENT.instruction, earlier) == ("too_long", "repeat")
    assert tight.fallback_quality(INTENT.instruction, earlier) < tight.fallback_quality(
        "I need muffins", earlier
    )


def test_cut_to_sentence_keeps_the_longest_complete_start() -> None:
    text = "Sum 3.5 and 2. Then double it! Is that ok? more words here"
    assert cut_to_sentence(text, 25) == "Sum 3.5 and 2. Then double it! Is that ok?"
    assert cut_to_sentence(text, 7) == "Sum 3.5 and 2. Then double it!"
    assert cut_to_sentence(text, 3) is None  # the first sentence has 4 words
    assert cut_to_sentence('He said "stop." and left', 25) == 'He said "stop."'
    assert cut_to_sentence("call x.append(3) now", 25) is None
    assert cut_to_sentence("... what", 25) is None  # nothing before the dots


def test_only_failing_rows_are_regenerated_up_to_the_budget() -> None:
    budget = UserLMBaseConfig().max_tries
    # row 2's texts differ: a row that gives back a text it was rejected for stops sooner
    script = {0: [OK], 1: [SHORT, OK], 2: [f"{RAMBLE} {i}" for i in range(budget)]}
    backend = _Scripted(script)
    states = [ConversationState(INTENT, seed=seed, messages=list(HISTORY)) for seed in script]
    turns = respond_with_retries(states, backend, UserLMBaseConfig())
    assert backend.calls == [[0, 1, 2], [1, 2], *[[2]] * (budget - 2)]
    assert [t.metadata["tries"] for t in turns] == [1, 2, budget]
    assert turns[2].metadata["guardrail_failed"] == "too_long"


def test_fallback_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="fallback"):
        UserLMBaseConfig(fallback="first")


# --- never end an empty conversation (scripted) ------------------------------------------------


def test_an_end_is_forbidden_on_a_first_turn_whatever_allow_end_says() -> None:
    config = UserLMBaseConfig(allow_end=True)
    assert vet(END_MARKER, [], config, first_turn=True).reason == "end_forbidden"
    assert vet(END_MARKER, [], config).reason is None
    backend = _Scripted({0: [END_MARKER, OK], 1: [END_MARKER]})
    states = [
        ConversationState(INTENT, seed=0),
        ConversationState(INTENT, seed=1, messages=list(HISTORY)),
    ]
    first, later = respond_with_retries(states, backend, config)
    assert (first.text, first.ended, first.metadata["tries"]) == (OK, False, 2)
    assert later.ended and later.metadata["tries"] == 1


class _Foreign:
    """A simulator from elsewhere that ends empty conversations ``ends`` times first."""

    def __init__(self, ends: int) -> None:
        self.ends, self.calls = ends, 0

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        self.calls += 1
        ended = self.calls <= self.ends
        return [UserTurn(END_MARKER if ended else OK, ended=ended) for _ in states]


def test_the_core_retries_a_foreign_simulator_that_ends_first_then_fails_clearly() -> None:
    patient = ConversationCore(_Foreign(ends=1))
    state = ConversationState(INTENT, seed=3)
    patient.start([state])
    assert [t.text for t in state.user_turns] == [OK]
    stubborn = ConversationCore(_Foreign(ends=99))
    with pytest.raises(SimulatorError, match=r"before their first user turn.*toy/muffins"):
        stubborn.start([ConversationState(INTENT, seed=4)])


# --- the embedded model (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm() -> LoadedModel:
    return load_model(EMBEDDED_MODEL)


@pytest.mark.slow
def test_the_embedded_model_never_ends_an_empty_conversation(smollm: LoadedModel) -> None:
    sim = UserLMSimulator(
        smollm,
        logit_bias={END_MARKER: 100.0},
        max_new_tokens=12,
        max_tries=2,
        min_words=None,
        max_words=None,
    )
    fresh = [ConversationState(INTENT, seed=seed) for seed in range(3)]
    talking = ConversationState(INTENT, seed=9, messages=list(HISTORY))
    turns = sim.respond([fresh[0], talking, *fresh[1:]])
    assert turns[1].ended  # the bias does end a conversation with a history, in the same batch
    for turn in (turns[0], *turns[2:]):
        assert not turn.ended, turn
        assert END_MARKER not in turn.metadata["raw"] and turn.text.strip()


@pytest.mark.slow
def test_the_issue_case_now_gets_a_turn_within_the_word_bounds(smollm: LoadedModel) -> None:
    # the issue's case: default settings, reset(seed=7); a 26-word turn cut mid-sentence was
    # kept for the intent that seed draws (HumanEval/154)
    env = gym.make("userlm_env/HumanEval-v0", simulator=UserLMSimulator(smollm))
    for options in (None, {"intent_id": "HumanEval/2"}):
        observation, _ = env.reset(seed=7, options=options)
        state = env.unwrapped.state  # type: ignore[attr-defined]
        assert 3 <= count_words(observation) <= 25, observation
        assert TurnChecks().reason(observation, earlier_texts(state)[1:]) is None
        assert "guardrail_failed" not in state.user_turns[0].metadata
    env.close()
