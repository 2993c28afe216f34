"""Benchmark: the whole simulation metrics suite on 650 conversations in at most 2 seconds.

Claim: shard matching, the per-episode metrics and flags, and the Table 3 suite (with exact
pairwise Jaccard as matrix operations) take at most 2 s for the paper's scale of 65 intents x
10 simulations on one CPU core, and the matrix Jaccard is not slower than a pure-Python
pair-by-pair computation of the same values.

Method: 65 intents (33 HumanEval, 32 GSM8k from ``../shared/data/gsm8k/test.jsonl``), 10
synthetic conversations each, built from the intents' shards with a seeded random paraphrase:
shards come in random order, one or two per turn, some skipped, some repeated, with words
dropped, conversational fillers added and, now and then, an added demand or a pure chit-chat
turn. Conversations are made before the clock starts. Timed: lexical matching of every turn,
:func:`~userlm_env.metrics.episode.episode_metrics` and unigram sets per conversation, and
:func:`~userlm_env.metrics.suite.compute_suite` over all of them. Separately, the mean pairwise
Jaccard per intent by matrix vs by Python sets (and once over 2,000 sets, like the paper's
first-turn diversity) is timed and checked equal.

Run: ``python benchmarks/metrics_speed.py [--repeats 3]``. The last line printed is a JSON
object with ``seconds`` (median suite time), ``conversations``, ``jaccard_speedup`` (naive /
matrix time per intent) and ``jaccard_2000_speedup``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from userlm_env.intents import load_gsm8k_jsonl, load_humaneval
from userlm_env.metrics.diversity import (
    mean_pairwise_jaccard,
    naive_mean_pairwise_jaccard,
)
from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.shards import LexicalShardMatcher
from userlm_env.metrics.suite import SimulatedEpisode, by_intent, compute_suite
from userlm_env.metrics.text import unigrams
from userlm_env.types import Intent

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
FILLERS = ("ok so", "also,", "hmm", "and", "btw", "right, and", "one more thing:", "so basically")
CHATTER = ("thanks, that helps", "wait what?", "can you explain that again", "ok", "hmm not sure")
DEMANDS = ("please keep it under 20 lines", "use a dictionary for that", "show every step")


def paraphrase(text: str, rng: random.Random) -> str:
    """Drop about a tenth of the words and maybe prepend a filler."""
    words = [w for w in text.split() if rng.random() > 0.1] or text.split()
    lead = [rng.choice(FILLERS)] if rng.random() < 0.5 else []
    return " ".join(lead + words)


def conversation(intent: Intent, rng: random.Random) -> list[str]:
    """User turns of one synthetic conversation on ``intent``."""
    shards = [s for s in intent.shards if s.required or rng.random() < 0.6]
    rng.shuffle(shards)
    turns = []
    while shards:
        group, shards = shards[: rng.choice((1, 1, 2))], shards[len(shards[:2]) :]
        turns.append(" ".join(paraphrase(s.text, rng) for s in group))
        if rng.random() < 0.15:
            turns.append(paraphrase(rng.choice(intent.shards).text, rng))  # a repeat
        if rng.random() < 0.1:
            turns.append(rng.choice(CHATTER + DEMANDS))
    return turns


def workload(seed: int = 0) -> list[tuple[Intent, list[str]]]:
    """65 intents x 10 conversations."""
    intents = load_humaneval(limit=33) + load_gsm8k_jsonl(GSM8K, limit=32)
    rng = random.Random(seed)
    return [(intent, conversation(intent, rng)) for intent in intents for _ in range(10)]


def run_suite(work: Sequence[tuple[Intent, list[str]]]) -> dict[str, Any]:
    """Everything a report computes from user turns: matching, episode metrics, the suite."""
    matcher, episodes = LexicalShardMatcher(), []
    for intent, turns in work:
        revealed = tuple(matcher.match(turn, intent) for turn in turns)
        view = EpisodeView(intent, tuple(turns), revealed, user_ended=True)
        episodes.append(SimulatedEpisode.from_view(view))
    return compute_suite(episodes)


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def jaccard_race(groups: list[list[frozenset[str]]], repeats: int) -> tuple[float, float]:
    """(matrix seconds, naive seconds) over ``groups``; checks that both agree."""
    matrix_s, fast = timed(lambda: [mean_pairwise_jaccard(g) for g in groups], repeats)
    naive_s, slow = timed(lambda: [naive_mean_pairwise_jaccard(g) for g in groups], repeats)
    if any(abs(a - b) > 1e-9 for a, b in zip(fast, slow, strict=True)):
        raise AssertionError("matrix and naive Jaccard disagree")
    return matrix_s, naive_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    args = parser.parse_args()
    work = workload()
    unigrams(work[0][1])  # import simplemma outside the clock; its lemma cache stays cold
    seconds, values = timed(lambda: run_suite(work), args.repeats)
    sets = [frozenset(unigrams(turns)) for _, turns in work]
    per_intent = [list(g) for g in by_intent_sets(work, sets)]
    matrix_s, naive_s = jaccard_race(per_intent, args.repeats)
    firsts = [unigrams(turns[0]) for _, turns in work] * 4  # 2,600 sets
    big_matrix_s, big_naive_s = jaccard_race([firsts[:2000]], 1)
    print(f"suite values: {json.dumps(values, default=str)}")
    print(f"suite: {seconds:.3f} s for {len(work)} conversations (median of {args.repeats})")
    print(f"jaccard per intent: matrix {matrix_s * 1e3:.1f} ms, naive {naive_s * 1e3:.1f} ms")
    print(f"jaccard over 2000 sets: matrix {big_matrix_s:.3f} s, naive {big_naive_s:.3f} s")
    print(
        json.dumps(
            {
                "seconds": round(seconds, 4),
                "conversations": len(work),
                "within_budget": seconds <= 2.0,
                "jaccard_speedup": round(naive_s / matrix_s, 3),
                "jaccard_2000_speedup": round(big_naive_s / big_matrix_s, 3),
            }
        )
    )


def by_intent_sets(
    work: Sequence[tuple[Intent, list[str]]], sets: Sequence[frozenset[str]]
) -> list[list[frozenset[str]]]:
    """The unigram sets grouped by intent, in the suite's grouping order."""
    episodes = [
        SimulatedEpisode(intent.intent_id, intent.task, 0, False, words, {})
        for (intent, _), words in zip(work, sets, strict=True)
    ]
    return [[e.words for e in group] for group in by_intent(episodes).values()]


if __name__ == "__main__":
    main()
