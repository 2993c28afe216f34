"""Tests of conversation loading, validation, the language filter, 7-gram de-duplication and the
user-level splits (userlm_env.training.data)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from userlm_env.errors import DataError
from userlm_env.training.data import (
    Conversation,
    DataConfig,
    assign_splits,
    conversation_from_record,
    filter_language,
    first_turn_ngrams,
    load_hub_conversations,
    prepare_conversations,
    prism_record,
    read_conversations,
    remove_near_duplicates,
    wildchat_record,
    write_conversations,
)

TEMPLATE_IDS = ("syn-009", "syn-010", "syn-011")


def _record(**overrides: Any) -> dict[str, Any]:
    record = {
        "conversation_id": "c1",
        "user_id": "u1",
        "country": "Chile",
        "language": "English",
        "messages": [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "hi"}],
    }
    return {**record, **overrides}


def _write(tmp_path: Path, records: list[Any]) -> Path:
    path = tmp_path / "conversations.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _conversation(cid: str, user: str, country: str, first: str = "hello there") -> Conversation:
    messages = ({"role": "user", "content": first}, {"role": "assistant", "content": "ok"})
    return Conversation(cid, user, country, "English", messages)


# --- reading ---------------------------------------------------------------------------------


def test_fixture_reads_with_metadata(conversations: list[Conversation]) -> None:
    assert len(conversations) == 12
    first = conversations[0]
    assert (first.conversation_id, first.user_id, first.country) == ("syn-001", "u-amber", "Canada")
    assert first.metadata == {"synthetic": True}
    assert first.intent is not None and first.intent.startswith("You are a user chatting")
    assert conversations[6].intent is None  # syn-007 has none
    assert conversations[1].user_turns == 3


def test_hashed_ip_stands_for_user_id(tmp_path: Path) -> None:
    record = _record()
    del record["user_id"]
    record["hashed_ip"] = "abc123"
    (conversation,) = read_conversations(_write(tmp_path, [record]))
    assert conversation.user_id == "abc123"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps(["a list"]), "expected a JSON object"),
        (json.dumps(_record(country=42)), "'country' must be a string or absent"),
        (json.dumps(_record(language=["English"])), "'language' must be a string or absent"),
        (json.dumps(_record(user_id={"id": 1})), "'user_id' must be a string, an integer"),
        (json.dumps(_record(conversation_id=1.5)), "'conversation_id' must be a string"),
        (json.dumps(_record(messages=[])), "'messages' must be a non-empty list"),
        (
            json.dumps(_record(messages=[{"role": "tool", "content": "x"}])),
            r"messages\[0\]\.role must be 'user', 'assistant' or 'system', got 'tool'",
        ),
        (
            json.dumps(_record(messages=[{"role": "user", "content": "  "}])),
            r"messages\[0\]\.content must be a non-empty string",
        ),
        (json.dumps(_record(messages=[{"role": "assistant", "content": "hi"}])), "no user"),
        (json.dumps(_record(messages=[{"role": "system", "content": "be brief"}])), "no user"),
        (json.dumps({"text": "hello"}), "no conversation found"),
        (json.dumps(_record(intent=42)), "'intent'"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, bad: str, expected: str) -> None:
    path = _write(tmp_path, [_record(conversation_id="ok"), bad])
    with pytest.raises(DataError, match=expected) as caught:
        read_conversations(path)
    assert f"{path}:2" in str(caught.value)


def test_duplicate_ids_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="duplicate conversation_id"):
        read_conversations(_write(tmp_path, [_record(), "", _record()]))
    with pytest.raises(DataError, match="does not exist"):
        read_conversations(tmp_path / "absent.jsonl")


def test_write_then_read_round_trips(tmp_path: Path, conversations: list[Conversation]) -> None:
    path = tmp_path / "out" / "copy.jsonl"
    assert write_conversations(conversations, path) == 12
    assert read_conversations(path) == conversations


def test_hub_loading_reports_missing_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="datasets"):
        load_hub_conversations("wildchat")
    with pytest.raises(DataError, match="datasets"):
        load_hub_conversations("someone/sharegpt-chats")


# Rows shaped like the hub datasets' (fields as their dataset cards describe them); the values
# are made up for these tests.
WILDCHAT_ROW = {
    "conversation_hash": "abc123",
    "hashed_ip": "ip-7f3e",
    "country": "Chile",
    "language": "English",
    "model": "gpt-4",
    "conversation": [
        {"role": "user", "content": "help me name a bakery", "turn_identifier": 1},
        {"role": "assistant", "content": "How about Crumb & Co?", "turn_identifier": 1},
    ],
}
PRISM_ROW = {
    "conversation_id": "c42",
    "user_id": "user17",
    "conversation_type": "unguided",
    "opening_prompt": "what should I cook tonight",
    "conversation_history": [
        {"turn": 0, "role": "user", "content": "what should I cook tonight"},
        {"turn": 0, "role": "model", "content": "Try a stir-fry.", "if_chosen": True},
        {"turn": 0, "role": "model", "content": "Soup is nice.", "if_chosen": False},
        {"turn": 1, "role": "user", "content": "no wok though"},
        {"turn": 1, "role": "model", "content": "A sheet-pan bake, then.", "if_chosen": True},
    ],
}


def test_hub_rows_become_conversations() -> None:
    wildchat = conversation_from_record(wildchat_record(WILDCHAT_ROW))
    assert (wildchat.conversation_id, wildchat.user_id, wildchat.country) == (
        "abc123",
        "ip-7f3e",
        "Chile",
    )
    assert [m["role"] for m in wildchat.messages] == ["user", "assistant"]
    assert wildchat.metadata.get("model") == "gpt-4"
    prism = conversation_from_record(prism_record(PRISM_ROW))
    assert (prism.conversation_id, prism.user_id) == ("c42", "user17")
    assert [m["content"] for m in prism.messages] == [
        "what should I cook tonight",
        "Try a stir-fry.",  # the chosen response; "Soup is nice." was not chosen
        "no wok though",
        "A sheet-pan bake, then.",
    ]
    with pytest.raises(DataError):  # an empty turn is refused, never kept
        conversation_from_record(wildchat_record({**WILDCHAT_ROW, "conversation": []}))


# --- language filter and de-duplication ------------------------------------------------------


def test_english_filter(conversations: list[Conversation]) -> None:
    kept = filter_language(conversations)
    assert [c.conversation_id for c in conversations if c not in kept] == ["syn-008"]
    assert len(filter_language(conversations, ["french", "ENGLISH"])) == 12


def test_ngrams_are_word_sevengrams() -> None:
    grams = first_turn_ngrams("One two three four five six seven EIGHT")
    assert grams == {"one two three four five six seven", "two three four five six seven eight"}
    assert first_turn_ngrams("only six words in this turn") == set()


def test_dedup_removes_every_template_conversation(conversations: list[Conversation]) -> None:
    kept, report = remove_near_duplicates(conversations, threshold=3)
    assert report.removed_ids == TEMPLATE_IDS
    assert (report.kept, report.removed) == (9, 3)
    assert report.templates and all(count == 3 for _, count in report.templates)
    assert "catalogue copywriter and describe the following product" in " ".join(
        gram for gram, _ in report.templates
    )
    assert not {c.conversation_id for c in kept} & set(TEMPLATE_IDS)


def test_dedup_threshold_and_representative(conversations: list[Conversation]) -> None:
    kept, report = remove_near_duplicates(conversations, threshold=4)
    assert report.removed == 0 and len(kept) == 12 and report.templates == ()
    kept, report = remove_near_duplicates(conversations, threshold=3, keep_representative=True)
    assert report.removed_ids == TEMPLATE_IDS[1:]
    assert "syn-009" in {c.conversation_id for c in kept}
    with pytest.raises(ValueError, match="at least 2"):
        remove_near_duplicates(conversations, threshold=1)


def test_dedup_never_removes_short_first_turns() -> None:
    same = [_conversation(f"c{i}", f"u{i}", "Peru", "hi") for i in range(50)]
    kept, report = remove_near_duplicates(same, threshold=2)
    assert len(kept) == 50 and report.removed == 0


# --- splits ----------------------------------------------------------------------------------


def _population() -> list[Conversation]:
    """300 users in 3 countries, 1-3 conversations each, one user active in two countries."""
    conversations = []
    for index in range(300):
        country = ("Chile", "Japan", "Ghana")[index % 3]
        for repeat in range(1 + index % 3):
            conversations.append(_conversation(f"c{index}-{repeat}", f"user{index}", country))
    conversations.append(_conversation("c-travel", "user0", "Japan"))  # user0 lives in Chile
    return conversations


def _users(part: list[Conversation]) -> set[str]:
    return {c.user_id for c in part}


def test_splits_never_share_a_user() -> None:
    splits = assign_splits(_population(), seed=3)
    train, validation, test = (_users(part) for part in splits)
    assert not (train & validation or train & test or validation & test)
    assert len(train | validation | test) == 300
    assert sum(len(part) for part in splits) == len(_population())


def test_splits_are_90_5_5_per_country() -> None:
    splits = assign_splits(_population(), seed=3)
    for country in ("Chile", "Japan", "Ghana"):
        counts = [
            len({c.user_id for c in part if c.country == country} - {"user0"}) for part in splits
        ]
        assert counts in ([90, 5, 5], [89, 5, 5])  # user0 counted in Chile only


def test_splits_are_deterministic_and_seeded() -> None:
    population = _population()
    first, again = assign_splits(population, seed=3), assign_splits(population, seed=3)
    assert [_users(p) for p in first] == [_users(p) for p in again]
    other = assign_splits(population, seed=4)
    assert _users(other.test) != _users(first.test)
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(population, fractions=(0.8, 0.1, 0.05))


def test_home_country_decides_a_travellers_split() -> None:
    splits = assign_splits(_population(), seed=3)
    home = next(i for i, part in enumerate(splits) if "user0" in _users(part))
    where = [i for i, part in enumerate(splits) for c in part if c.conversation_id == "c-travel"]
    assert where == [home]


def test_prepare_pipeline_on_fixture(fixture_path: Path) -> None:
    config = DataConfig(path=str(fixture_path), dedup_threshold=3, fractions=(0.5, 0.25, 0.25))
    prepared = prepare_conversations(config)
    assert (prepared.loaded, prepared.after_language) == (12, 11)
    assert prepared.dedup is not None and prepared.dedup.removed == 3
    sizes = Counter(c.user_id for part in prepared.splits for c in part)
    assert sum(sizes.values()) == 8
    with pytest.raises(DataError, match="path"):
        prepare_conversations(DataConfig(path=None))
