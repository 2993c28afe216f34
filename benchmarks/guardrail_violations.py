"""Benchmark: how often the User LM guardrails keep a turn that breaks them, before and after.

Claim: paper appendix D.1 generates a user turn again *until* it passes (3..25 words, no
banned first word, no verbatim repeat). With 8 tries and the *last* candidate kept (the
behaviour before issue 11), the embedded model keeps a violation in a few percent of its
turns, over-long turns cut off mid-sentence; with the default budget (``max_tries=16``, only
failing rows regenerated) and the *best* candidate kept (an over-long one cut back at a
sentence end), a kept violation is rare and a kept turn over the word limit rarer still (only
one with no sentence end within the limit, after every try failed).

Workload: the embedded UserLM (``UserLMSimulator("smollm2-135m-instruct")``) with the settings
of ``experiments/conf/simulator/userlm_embedded.yaml`` writes ``--first-turns`` first turns
(GSM-Symbolic and HumanEval intents alternating, one seed each), then ``--later-turns`` second
turns (the first of those conversations, each with its kept first turn and one fixed assistant
reply). Rows are generated up to ``--record-tries`` times (only the rows still failing, batched)
and every generation is recorded.

Every behaviour from the same run: a row's generations depend only on its state, the try index
and which rows are still pending, and the pending rows of the first ``k`` tries are the same
whatever a larger budget does later. Replaying the recorded generations through
:func:`simulators.sampling.respond_with_retries` with ``max_tries=k`` therefore gives exactly
what a run with that budget keeps. ``before`` is ``max_tries=8, fallback="last"``; ``after`` is
the config (``max_tries=16``, ``fallback="best"``). Both ban the end marker on first turns (an
end is no guardrail violation; the core used to retry it), and the later turns continue the
conversations ``after`` kept, so both behaviours are measured on the same states.

Then ``userlm_env/HumanEval-v0`` is reset with ``seed=7`` under the default simulator settings,
before and after (the issue's case: that seed draws HumanEval/154, and 8 tries kept a 26-word
turn cut mid-sentence), and with ``intent_id="HumanEval/2"``; the turns are printed.

Measured (2 cores at load ~3, defaults): 48 turns, 111 generations in 233 s. Rows still failing
after 1, 2, ... tries: 23, 13, 7, 6, 4, 3, 2, 2, 2, 1, 0 (an 80-turn run: 39, 20, 10, 7, 5, 4, 2,
2, 2, 1, 0). ``before`` kept 2 of 48 turns (4.2%; 2 of 80 in the larger run), both over 25 words
and cut off mid-sentence; ``after`` kept none, for 5 more generations (111 vs 106). With
``fallback="best"`` 8 tries would already have cut both back at a sentence end; 16 leaves room
for the tail (the slowest row passed at its 11th try; the issue's case at its 13th). Issue's
case: before, HumanEval/154 kept the 26-word turn after 8 tries; after, a 22-word turn passed at
try 13; HumanEval/2 passed at try 2 (16 words) either way.

Run: ``python benchmarks/guardrail_violations.py [--first-turns 40] [--later-turns 8]
[--record-tries 24] [--skip-issue-case]`` (about 4 minutes on 2 busy cores, and 1.5 more for
the issue's case). The last line printed is a JSON object: ``turns``,
``kept_violation_rate_before`` / ``_after``, ``over_limit_kept_rate_before`` / ``_after`` and
the counts ``over_limit_kept_before`` / ``_after`` (kept turns over ``max_words`` words),
``cut_to_sentence_after``, the generations of each, ``kept_violations_by_max_tries``
(``fallback="best"``), ``seconds`` (generation only) and ``issue_case_words``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall busy cores
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import userlm_env  # noqa: E402, F401  (registers the env ids)
from simulators.guardrails import count_words  # noqa: E402
from simulators.sampling import Generation, UserLMConfig, respond_with_retries  # noqa: E402
from simulators.userlm import UserLMSimulator  # noqa: E402
from userlm_env.intents import load_gsm_symbolic, load_humaneval  # noqa: E402
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model  # noqa: E402
from userlm_env.types import ConversationState, Intent, Message, UserTurn  # noqa: E402

CONFIG = ROOT / "experiments" / "conf" / "simulator" / "userlm_embedded.yaml"
REPLY = "Happy to help with that. Could you tell me a bit more about what you need?"
BEFORE: dict[str, Any] = {"max_tries": 8, "fallback": "last"}
SEED = 2024


@dataclass
class Recorder:
    """A backend that generates through the simulator and records every generation."""

    simulator: UserLMSimulator  # generates
    records: dict[int, list[Generation]] = field(default_factory=dict)  # id(state) -> tries

    def __call__(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        generations = self.simulator.generate(states, attempt)
        for state, generation in zip(states, generations, strict=True):
            self.records.setdefault(id(state), []).append(generation)
        return generations

    def replay(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        """The recorded generations of try ``attempt`` (the same pending rows as recorded)."""
        return [self.records[id(state)][attempt] for state in states]


def embedded_settings() -> dict[str, Any]:
    """The ``userlm_embedded`` config's simulator fields (model and registry name left out)."""
    fields = OmegaConf.to_container(OmegaConf.load(CONFIG))
    assert isinstance(fields, dict)
    return {str(k): v for k, v in fields.items() if k not in ("_target_", "name", "model")}


def first_states(count: int) -> list[ConversationState]:
    """``count`` fresh conversations, alternating GSM-Symbolic and HumanEval intents."""
    math, code = load_gsm_symbolic(n=(count + 1) // 2, seed=0), load_humaneval(count // 2)
    intents: list[Intent] = [i for pair in zip(math, code, strict=False) for i in pair]
    intents += math[len(code) :]
    return [ConversationState(intent, seed=SEED + i) for i, intent in enumerate(intents)]


def later_states(
    firsts: Sequence[ConversationState], turns: Sequence[UserTurn], count: int
) -> list[ConversationState]:
    """Second-turn states: each conversation's kept first turn and the fixed reply."""
    states = []
    for state, turn in list(zip(firsts, turns, strict=True))[:count]:
        messages: list[Message] = [
            {"role": "user", "content": turn.text},
            {"role": "assistant", "content": REPLY},
        ]
        states.append(ConversationState(state.intent, seed=state.seed + 1, messages=messages))
    return states


def summary(turns: Sequence[UserTurn], config: UserLMConfig) -> dict[str, Any]:
    """Kept violations (by rule), kept turns over the word limit, sentence cuts, generations."""
    limit = config.max_words if config.max_words is not None else float("inf")
    rules = [str(t.metadata["guardrail_failed"]) for t in turns if "guardrail_failed" in t.metadata]
    return {
        "kept_violations": len(rules),
        "over_limit_kept": sum(count_words(t.text) > limit for t in turns if not t.ended),
        "cut_to_sentence": sum(bool(t.metadata.get("cut_to_sentence")) for t in turns),
        "generations": sum(int(t.metadata["tries"]) for t in turns),
        "rules": {rule: rules.count(rule) for rule in sorted(set(rules))},
    }


def replay(
    recorder: Recorder, states: list[ConversationState], config: UserLMConfig
) -> list[UserTurn]:
    """What ``config`` keeps for ``states``, from the recorded generations."""
    return respond_with_retries(states, recorder.replay, config)


def pending_after(recorder: Recorder, states: Sequence[ConversationState]) -> list[int]:
    """Rows still without a passing turn after each try (``[k]``: after ``k + 1`` tries)."""
    tries = [len(recorder.records[id(state)]) for state in states]
    return [sum(n > k for n in tries) for k in range(1, max(tries) + 1)]


def record(
    loaded: LoadedModel, settings: dict[str, Any], args: argparse.Namespace
) -> tuple[Recorder, list[ConversationState]]:
    """Generate the workload up to ``--record-tries`` per row; returns the recorder and states."""
    recorded = UserLMConfig(**{**settings, "max_tries": args.record_tries})
    recorder = Recorder(UserLMSimulator(loaded, config=recorded))
    firsts = first_states(args.first_turns)
    respond_with_retries(firsts, recorder, recorded)
    kept = replay(recorder, firsts, UserLMConfig(**settings))
    laters = later_states(firsts, kept, args.later_turns)
    respond_with_retries(laters, recorder, recorded)
    return recorder, firsts + laters


def issue_cases(loaded: LoadedModel) -> dict[str, dict[str, int]]:
    """The issue's case (default settings, ``reset(seed=7)``) before and after; returns words."""
    words: dict[str, dict[str, int]] = {}
    for name, overrides in (("before", BEFORE), ("after", {})):
        simulator = UserLMSimulator(loaded, config=UserLMConfig(**overrides))
        env = gym.make("userlm_env/HumanEval-v0", simulator=simulator)
        words[name] = {}
        for options in (None, {"intent_id": "HumanEval/2"}):
            observation, info = env.reset(seed=7, options=options)
            turn = env.unwrapped.state.user_turns[0]  # type: ignore[attr-defined]
            meta = {k: v for k, v in turn.metadata.items() if k != "raw"}
            words[name][str(info["intent_id"])] = count_words(observation)
            print(
                f"{name}: reset(seed=7, options={options}): {info['intent_id']}: "
                f"{observation!r} ({count_words(observation)} words, {meta})"
            )
        env.close()
    return words


def behaviour(
    recorder: Recorder, states: list[ConversationState], config: UserLMConfig, name: str
) -> dict[str, Any]:
    """Replay ``config``, print its figures and the violations it keeps; returns the figures."""
    turns = replay(recorder, states, config)
    figures = summary(turns, config)
    print(f"{name} (max_tries={config.max_tries}, fallback={config.fallback}): {figures}")
    for turn in turns:
        if "guardrail_failed" in turn.metadata:
            words = count_words(turn.text)
            print(f"  kept ({turn.metadata['guardrail_failed']}, {words} words): {turn.text!r}")
    return figures


def report(
    recorder: Recorder,
    states: list[ConversationState],
    settings: dict[str, Any],
    record_tries: int,
) -> dict[str, Any]:
    """Print each behaviour's figures; returns those the JSON line carries."""
    print(f"rows still failing after 1, 2, ... tries: {pending_after(recorder, states)}")
    before = behaviour(recorder, states, UserLMConfig(**{**settings, **BEFORE}), "before")
    after_config = UserLMConfig(**settings)
    after = behaviour(recorder, states, after_config, "after")
    curve = {}
    for budget in (b for b in (1, 2, 4, 8, 12, 16, 20, 24, 32) if b <= record_tries):
        config = UserLMConfig(**{**settings, "max_tries": budget})
        curve[budget] = summary(replay(recorder, states, config), config)["kept_violations"]
    print(f"kept violations by max_tries (fallback=best): {curve}")
    n = len(states)
    return {
        "turns": n,
        "kept_violation_rate_before": round(before["kept_violations"] / n, 4),
        "kept_violation_rate_after": round(after["kept_violations"] / n, 4),
        "over_limit_kept_rate_before": round(before["over_limit_kept"] / n, 4),
        "over_limit_kept_rate_after": round(after["over_limit_kept"] / n, 4),
        "over_limit_kept_before": before["over_limit_kept"],
        "over_limit_kept_after": after["over_limit_kept"],
        "cut_to_sentence_after": after["cut_to_sentence"],
        "generations_before": before["generations"],
        "generations_after": after["generations"],
        "max_tries_after": after_config.max_tries,
        "kept_violations_by_max_tries": curve,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the last line printed is the JSON summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--first-turns", type=int, default=40)
    parser.add_argument("--later-turns", type=int, default=8)
    parser.add_argument("--record-tries", type=int, default=24)
    parser.add_argument("--skip-issue-case", action="store_true")
    args = parser.parse_args(argv)
    loaded, settings = load_model(EMBEDDED_MODEL), embedded_settings()
    start = time.perf_counter()
    recorder, states = record(loaded, settings, args)
    seconds = time.perf_counter() - start
    generations = sum(len(r) for r in recorder.records.values())
    print(f"{len(states)} turns, {generations} generations in {seconds:.0f} s")
    figures = report(recorder, states, settings, args.record_tries)
    cases = {} if args.skip_issue_case else issue_cases(loaded)
    figures["seconds"] = round(seconds)
    figures["issue_case_words"] = cases
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
