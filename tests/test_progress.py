"""Progress of long commands (userlm_env.progress) and its three wired commands.

Plain mode is driven by a fake clock (no sleeping, no wall-clock asserts): its lines are
checked exactly. Live mode writes to a fake terminal (a StringIO whose ``isatty()`` is true) and
is checked for tqdm's carriage returns. The wired commands run offline on the scripted stand-in
clients and rule-based users their own tests use.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from experiments.intrinsic import main as intrinsic_main
from tests.intents.test_llm_sharder import CODE, GOOD_CODE, GOOD_MATH, MATH, ScriptedClient
from tests.metrics.data import FIXTURES
from tests.metrics.data import ScriptedClient as JudgeClient
from tests.metrics.test_intrinsic import RuleUser
from tests.training.conftest import FIXTURE as CONVERSATIONS
from userlm_env.errors import DataError, LLMCallError
from userlm_env.intents import LLMSharder
from userlm_env.llm import LLMClient, LLMConfig, LLMStats
from userlm_env.metrics.intrinsic import (
    IntentAdherenceJudge,
    IntrinsicData,
    load_jsonl,
    run_intrinsic,
)
from userlm_env.progress import (
    Progress,
    ProgressSettings,
    client_spend,
    format_duration,
    progress_line,
)
from userlm_env.spend import Spend
from userlm_env.training.data import read_conversations
from userlm_env.training.intents import IntentConfig, generate_intents
from userlm_env.types import Message

PLAIN = ProgressSettings(plain_every_items=1, live=False)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class FakeTTY(io.StringIO):
    """An in-memory stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def plain(total: int, clock: FakeClock, **kwargs: Any) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress(total, label="score", stream=stream, clock=clock, **kwargs), stream


# --------------------------------------------------------------------------- the formatter


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 5.9, 62, 2470, 7380, -3)] == [
        "0s", "5s", "1m02s", "41m10s", "2h03m", "0s",
    ]  # fmt: skip


def test_progress_line_fields() -> None:
    line = progress_line(
        label="score", unit="episode", done=40, total=1640, failed=1,
        elapsed_s=62.0, done_in_run=40, spent="$0.0123",
    )  # fmt: skip
    # rate 40 / 62 s -> 1600 left take 2480 s
    assert line == (
        "[score] 40/1640 episodes (2.4%) · failed 1 · spent $0.0123 · 1m02s elapsed · ETA 41m20s"
    )
    one = progress_line(
        label="shard", unit="instruction", done=0, total=1, failed=0, elapsed_s=0.0, done_in_run=0
    )
    assert one == "[shard] 0/1 instruction (0.0%) · failed 0 · 0s elapsed · ETA ?"
    final = progress_line(
        label="x", unit="item", done=2, total=3, failed=0, elapsed_s=3, done_in_run=2, final=True
    )
    assert final.endswith("· 3s elapsed · stopped")


# --------------------------------------------------------------------------- plain mode


def test_plain_line_every_n_items_then_a_final_line() -> None:
    clock = FakeClock()
    settings = ProgressSettings(plain_every_items=10, plain_every_s=1e9)
    progress, stream = plain(25, clock, settings=settings)
    for k in range(25):
        clock.tick(2.0)
        progress.advance(failed=1 if k in (3, 17) else 0)
    progress.close()
    progress.close()  # idempotent: no second final line
    assert lines(stream) == [
        "[score] 0/25 episodes (0.0%) · failed 0 · 0s elapsed · ETA ?",
        "[score] 10/25 episodes (40.0%) · failed 1 · 20s elapsed · ETA 30s",
        "[score] 20/25 episodes (80.0%) · failed 2 · 40s elapsed · ETA 10s",
        "[score] 25/25 episodes (100.0%) · failed 2 · 50s elapsed · finished",
    ]
    assert (progress.done, progress.failed, progress.total) == (25, 2, 25)
    assert "\r" not in stream.getvalue()


def test_plain_line_every_s_seconds_whichever_first() -> None:
    clock = FakeClock()
    settings = ProgressSettings(plain_every_items=4, plain_every_s=30.0)
    progress, stream = plain(100, clock, settings=settings)
    for step in (10, 10, 9):  # 29 s since the opening line: not yet
        clock.tick(step)
        progress.advance()
    assert len(lines(stream)) == 1
    clock.tick(1)
    progress.advance()  # 30 s and 4 items: one line
    clock.tick(31)
    progress.advance()  # 31 s after that line, 1 item: a line by time
    progress.advance(4)  # no time passed, 4 items: a line by count
    assert lines(stream)[1:] == [
        "[score] 4/100 episodes (4.0%) · failed 0 · 30s elapsed · ETA 12m00s",
        "[score] 5/100 episodes (5.0%) · failed 0 · 1m01s elapsed · ETA 19m19s",
        "[score] 9/100 episodes (9.0%) · failed 0 · 1m01s elapsed · ETA 10m16s",
    ]


def test_done_before_counts_as_done_but_not_toward_the_rate() -> None:
    clock = FakeClock()
    progress, stream = plain(100, clock, done_before=20, settings=ProgressSettings(10))
    clock.tick(50)
    progress.advance(10, failed=2)
    # 10 items in 50 s -> 70 left take 350 s (counting the 20 resumed ones would say 116 s)
    assert lines(stream) == [
        "[score] 20/100 episodes (20.0%) · failed 0 · 0s elapsed · ETA ?",
        "[score] 30/100 episodes (30.0%) · failed 2 · 50s elapsed · ETA 5m50s",
    ]
    assert progress.done == 30


def test_an_interrupted_run_ends_with_a_stopped_line() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    with pytest.raises(KeyError), Progress(5, label="score", stream=stream, clock=clock) as run:
        run.advance(2)
        raise KeyError("boom")
    assert lines(stream)[-1] == "[score] 2/5 episodes (40.0%) · failed 0 · 0s elapsed · stopped"


@pytest.mark.parametrize(
    ("reported", "shown"),
    [
        (Spend(0.0123, 0), "spent $0.0123"),
        (Spend(0.0123, 2), "spent $0.0123 + unknown"),
        (Spend(0.0, 3), "spent unknown"),
        (None, "spent unknown"),
    ],
)
def test_spend_is_shown_as_reported(reported: Spend | None, shown: str) -> None:
    progress, stream = plain(4, FakeClock(), spend=lambda: reported, settings=PLAIN)
    progress.advance()
    progress.close()
    assert all(f"· {shown} ·" in line for line in lines(stream))


def test_spend_is_read_at_each_line_and_left_out_without_a_callable() -> None:
    spent = [Spend()]
    progress, stream = plain(2, FakeClock(), spend=lambda: spent[0], settings=PLAIN)
    spent[0] = Spend(0.5, 0)
    progress.advance()
    assert [line.split(" · ")[2] for line in lines(stream)] == ["spent $0.0000", "spent $0.5000"]
    silent, stream = plain(2, FakeClock(), settings=PLAIN)
    silent.advance()
    assert "spent" not in stream.getvalue()


def test_client_spend_reads_an_llm_clients_stats() -> None:
    spend = client_spend(LLMClient(LLMConfig(model="openai/no-such-model")))
    assert spend is not None and spend() == Spend(0.0, 0)
    assert client_spend(ScriptedClient([])) is None  # a stand-in without stats


def test_note_is_a_labelled_line() -> None:
    progress, stream = plain(3, FakeClock(), settings=PLAIN)
    progress.note("retrying 2 instructions")
    progress.advance()
    assert lines(stream)[1:] == [
        "[score] retrying 2 instructions",
        "[score] 1/3 episodes (33.3%) · failed 0 · 0s elapsed · ETA ?",
    ]


def test_stream_defaults_to_stderr_at_construction(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(1, label="score", unit="run", settings=PLAIN) as progress:
        progress.advance()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("[score] 0/1 run (0.0%)")
    assert captured.err.count("\n") == 3 and "\r" not in captured.err


def test_misuse_is_rejected() -> None:
    progress, _ = plain(3, FakeClock())
    with pytest.raises(ValueError, match="exceeds the total of 3"):
        progress.advance(4)
    with pytest.raises(ValueError, match="0 <= failed <= n"):
        progress.advance(1, failed=2)
    progress.close()
    with pytest.raises(RuntimeError, match="closed"):
        progress.advance()
    with pytest.raises(ValueError, match="done_before"):
        Progress(3, label="score", done_before=4, stream=io.StringIO())
    with pytest.raises(ValueError, match="plain_every_items"):
        ProgressSettings(plain_every_items=0)
    with pytest.raises(ValueError, match="plain_every_s"):
        ProgressSettings(plain_every_s=0)


# --------------------------------------------------------------------------- live mode


def test_a_terminal_gets_a_live_tqdm_bar() -> None:
    stream = FakeTTY()
    spend = Spend(0.25, 0)
    with Progress(8, label="score", stream=stream, done_before=2, spend=lambda: spend) as bar:
        bar.advance(5, failed=1)
        bar.note("halfway")
        bar.advance()
    text = stream.getvalue()
    assert "\r" in text and "[score]" in text
    assert "8/8" in text and "failed 1 · spent $0.2500" in text
    assert "\n[score] halfway\n" in text.replace("\r", "\n")
    assert " elapsed · " not in text  # no plain lines on a terminal


def test_settings_override_the_tty_check() -> None:
    forced_plain, forced_live = FakeTTY(), io.StringIO()
    Progress(2, label="a", stream=forced_plain, settings=ProgressSettings(live=False)).close()
    Progress(2, label="b", stream=forced_live, settings=ProgressSettings(live=True)).close()
    assert "\r" not in forced_plain.getvalue() and forced_plain.getvalue().startswith("[a] 0/2")
    assert "\r" in forced_live.getvalue()


# --------------------------------------------------------------------------- wired commands


def progress_lines(err: str, label: str) -> list[str]:
    """The plain progress lines of ``label``: elapsed time and ETA masked as ``T``."""
    found = [line for line in err.splitlines() if line.startswith(f"[{label}] ")]
    masked = [re.sub(r" · \d\S* elapsed · ETA \S+$", " · T", line) for line in found]
    return [re.sub(r" · \d\S* elapsed · (finished|stopped)$", r" · T \1", m) for m in masked]


def test_sharder_shows_instructions_sharded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    LLMSharder(ScriptedClient([GOOD_MATH]), cache_dir=tmp_path).shard(MATH, "gsm8k")
    assert capsys.readouterr().err == ""  # off by default (library use)
    client = ScriptedClient(["bad", GOOD_CODE])
    sharder = LLMSharder(client, cache_dir=tmp_path, progress=PLAIN)
    assert len(sharder.shard_many([MATH, CODE], ["gsm8k", "humaneval"])) == 2
    shown = progress_lines(capsys.readouterr().err, "shard")
    assert shown[:2] == [  # MATH came from the cache: done before the run
        "[shard] 1/2 instructions (50.0%) · failed 0 · T",
        "[shard] 2/2 instructions (100.0%) · failed 0 · T",
    ]
    assert shown[2:] == ["[shard] 2/2 instructions (100.0%) · failed 0 · T finished"]

    doomed = LLMSharder(ScriptedClient(["nope"]), max_tries=1, progress=PLAIN)
    with pytest.raises(DataError, match="after 1 tries"):
        doomed.shard("Ann has 4 pens. How many pens does Ann have?", "gsm8k")
    assert progress_lines(capsys.readouterr().err, "shard") == [
        "[shard] 0/1 instruction (0.0%) · failed 0 · T",
        "[shard] 1/1 instruction (100.0%) · failed 1 · T",
        "[shard] 1/1 instruction (100.0%) · failed 1 · T finished",
    ]


@dataclass
class IntentClient:
    """Stand-in LLM client: fails requests about "FAIL-ME", answers the others; its ``stats``
    report a fixed spend (a fault and a price the local server cannot produce)."""

    config: LLMConfig = field(default_factory=lambda: LLMConfig(model="scripted/intents"))
    stats: LLMStats = field(default_factory=lambda: LLMStats(cost_known=0.5, cost_unknown_calls=1))

    def chat_many(self, conversations: Sequence[Sequence[Any]], **_: Any) -> list[Any]:
        return [
            LLMCallError("server gone", attempts=5)
            if "FAIL-ME" in prompt[-1]["content"]
            else JudgeResult("Get some help.")
            for prompt in conversations
        ]


@dataclass
class JudgeResult:
    text: str


def test_intent_generation_shows_conversations_with_an_intent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    conversations = read_conversations(CONVERSATIONS)  # 12; the first 2 keep their intent
    todo = conversations[:2] + [replace(c, intent=None) for c in conversations[2:]]
    doomed = Message(role="user", content="FAIL-ME please")
    todo[5] = replace(todo[5], messages=(doomed,))
    config = IntentConfig(batch_size=4, skip_failed=True)
    _, report = generate_intents(
        todo, IntentClient(), config, progress=PLAIN, progress_unit="train conversation"
    )
    assert (report.preset, report.generated, len(report.failed)) == (2, 9, 1)
    spent = "spent $0.5000 + unknown"
    assert progress_lines(capsys.readouterr().err, "intents") == [
        f"[intents] 2/12 train conversations (16.7%) · failed 0 · {spent} · T",
        f"[intents] 6/12 train conversations (50.0%) · failed 1 · {spent} · T",
        f"[intents] 10/12 train conversations (83.3%) · failed 1 · {spent} · T",
        f"[intents] 12/12 train conversations (100.0%) · failed 1 · {spent} · T",
        f"[intents] 12/12 train conversations (100.0%) · failed 1 · {spent} · T finished",
    ]


def test_intrinsic_suite_shows_turns_and_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    data = IntrinsicData(
        conversations=load_jsonl(FIXTURES / "conversations.jsonl", "conversations"),
        mcq=load_jsonl(FIXTURES / "mcq.jsonl", "mcq"),
        questions=load_jsonl(FIXTURES / "questions.jsonl", "questions"),
    )
    judge = IntentAdherenceJudge(JudgeClient(['{"adheres": true}'] * 3))
    settings = ProgressSettings(plain_every_items=5, live=False)
    run_intrinsic(RuleUser(), data, judge=judge, batch_size=4, progress=settings)
    # 5 first turns + 11 after real replies + 4 MCQ + 3 questions: 23 turns; 3 verdicts
    counts = [line.split()[1] for line in progress_lines(capsys.readouterr().err, "intrinsic")]
    # batches of 4: first turns 4, 1 (line at 5), termination 4, 4, 3 (line at 13), MCQ 4
    # (line at 20), question turns 3, verdicts 3 (line at 26), and the final line
    assert counts == ["0/26", "5/26", "13/26", "20/26", "26/26", "26/26"]


def test_intrinsic_command_shows_progress_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [f"--{k}={FIXTURES / f'{k}.jsonl'}" for k in ("conversations", "mcq", "questions")]
    intrinsic_main(["--simulator", "sharded", *files])
    shown = progress_lines(capsys.readouterr().err, "intrinsic")
    # no judge: 5 first turns + 11 termination turns + 4 MCQ turns; a line every 10 items
    assert shown == [
        "[intrinsic] 0/20 items (0.0%) · failed 0 · T",
        "[intrinsic] 16/20 items (80.0%) · failed 0 · T",
        "[intrinsic] 20/20 items (100.0%) · failed 0 · T finished",
    ]
    intrinsic_main(["--simulator", "sharded", "--no-progress", *files])
    assert "[intrinsic]" not in capsys.readouterr().err
