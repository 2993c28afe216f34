"""Benchmark: how well the lexical shard matcher recovers the shards each user turn reveals.

Claim: on conversations of the rule-based ``sharded`` simulator (whose revealed shards are
known), the offline lexical matcher reaches micro-F1 >= 0.95 over all 164 HumanEval intents and
the first 300 GSM8k test intents. Its F1 on reworded turns is reported too: the hand-written
paraphrases of ``tests/metrics/fixtures/paraphrased_turns.jsonl`` (written by us, 32 turns), and
optionally turns of any simulator that reports its shards.

Micro-F1 counts (turn, shard id) pairs: a true positive is a shard id both matched and true for
the same turn. Run: ``python benchmarks/matcher_f1.py``. The last line printed is a JSON object
``{"sharded_f1", "sharded_humaneval_f1", "sharded_gsm8k_f1", "paraphrase_f1", ...}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.sharded import ShardedSimulator  # noqa: E402
from userlm_env.intents import load_gsm8k_jsonl, load_humaneval  # noqa: E402
from userlm_env.metrics.shards import (  # noqa: E402
    LabelledTurn,
    LexicalShardMatcher,
    MatchScores,
    matcher_scores,
)
from userlm_env.types import ConversationState, Intent  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
PARAPHRASES = ROOT / "tests" / "metrics" / "fixtures" / "paraphrased_turns.jsonl"


def simulated_turns(simulator: object, intents: Sequence[Intent]) -> list[LabelledTurn]:
    """Every turn of ``simulator`` (one that reports ``shard_ids``) until it reveals nothing."""
    turns = []
    for intent in intents:
        state = ConversationState(intent=intent, seed=0)
        for _ in range(len(intent.shards) + 1):
            turn = simulator.respond([state])[0]  # type: ignore[attr-defined]
            if turn.ended or turn.shard_ids is None:
                break
            state.user_turns.append(turn)
            state.revealed.append(tuple(turn.shard_ids))
            turns.append(LabelledTurn(intent, turn.text, tuple(turn.shard_ids)))
            if not turn.shard_ids:
                break
    return turns


def paraphrased_turns(intents: dict[str, Intent]) -> list[LabelledTurn]:
    """The hand-written paraphrase fixture."""
    rows = [json.loads(line) for line in PARAPHRASES.read_text().splitlines() if line.strip()]
    return [LabelledTurn(intents[r["intent_id"]], r["text"], tuple(r["shard_ids"])) for r in rows]


def show(name: str, scores: MatchScores) -> None:
    print(
        f"{name:>22}: F1 {scores.f1:.4f}  precision {scores.precision:.4f}  "
        f"recall {scores.recall:.4f}  ({scores.turns} turns, {scores.true_ids} true ids)"
    )


def main() -> None:
    humaneval, gsm8k = load_humaneval(), load_gsm8k_jsonl(GSM8K, limit=300)
    matcher, simulator = LexicalShardMatcher(), ShardedSimulator()
    he_turns, gsm_turns = simulated_turns(simulator, humaneval), simulated_turns(simulator, gsm8k)
    results = {
        "sharded_humaneval": matcher_scores(matcher, he_turns),
        "sharded_gsm8k": matcher_scores(matcher, gsm_turns),
        "sharded": matcher_scores(matcher, he_turns + gsm_turns),
    }
    intents = {i.intent_id: i for i in humaneval + gsm8k}
    results["paraphrase"] = matcher_scores(matcher, paraphrased_turns(intents))
    for name, scores in results.items():
        show(name, scores)
    report = {f"{name}_f1": round(s.f1, 4) for name, s in results.items()}
    report |= {"sharded_turns": results["sharded"].turns, "paraphrase_turns": 32}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
