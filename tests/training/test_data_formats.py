"""Tests of reading conversations as people have them (userlm_env.training.data): OpenAI/TRL
``messages``, ShareGPT ``conversations``, JSON arrays, ``datasets.Dataset`` rows, hub names
offline, derived ids, the user and language fallbacks, and skipping or stopping at bad records."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import pytest
from omegaconf import OmegaConf

from userlm_env.errors import DataError
from userlm_env.training.data import (
    Conversation,
    DataConfig,
    assign_splits,
    conversation_from_record,
    conversations_from_rows,
    filter_language,
    load_conversations,
    load_hub_conversations,
    messages_fingerprint,
    prepare_conversations,
    read_conversations,
    write_conversations,
)

DATA_LOGGER = "userlm_env.training.data"
CURATION_LOGGER = "userlm_env.training.curation"


def _chat(*turns: str) -> list[dict[str, str]]:
    """OpenAI messages alternating user and assistant, starting with the user."""
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(turns)
    ]


def _sharegpt(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def _jsonl(tmp_path: Path, records: list[Any], name: str = "conversations.jsonl") -> Path:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- formats ---------------------------------------------------------------------------------


def test_messages_only_records_load_with_derived_ids(tmp_path: Path) -> None:
    records = [
        {"messages": _chat("name a bakery", "Crumb & Co", "shorter?", "Crumb")},
        {"messages": _chat("what is 7 times 8", "56")},
    ]
    first, second = read_conversations(_jsonl(tmp_path, records))
    assert (first.user_id, first.country, first.language, first.intent) == (None,) * 4
    assert first.metadata == {} and first.user_turns == 2
    assert first.conversation_id == "sha256:" + messages_fingerprint(first.messages)[:16]
    assert len(first.conversation_id) == len("sha256:") + 16
    assert first.conversation_id != second.conversation_id
    # the id depends on the content only: the same record elsewhere in another file keeps it
    moved = read_conversations(_jsonl(tmp_path, [records[1], records[0]], "other.jsonl"))
    assert [c.conversation_id for c in moved] == [second.conversation_id, first.conversation_id]


def test_openai_metadata_fields_are_read(tmp_path: Path) -> None:
    record = {
        "conversation_id": 7,  # an integer id is read as text
        "hashed_ip": "ip-1",
        "country": "Peru",
        "language": "Spanish",
        "intent": "You are a user chatting with an assistant to plan a trip.",
        "source": "my-app",
        "messages": _chat("hola", "hola, ¿en qué te ayudo?"),
    }
    (conversation,) = read_conversations(_jsonl(tmp_path, [record]))
    assert conversation.conversation_id == "7"
    assert (conversation.user_id, conversation.country, conversation.language) == (
        "ip-1",
        "Peru",
        "Spanish",
    )
    assert conversation.intent == record["intent"]
    assert conversation.metadata == {"source": "my-app"}


def test_blank_optional_fields_count_as_absent() -> None:
    record = {"messages": _chat("hi"), "user_id": "", "country": None, "language": "  "}
    conversation = conversation_from_record(record)
    assert (conversation.user_id, conversation.country, conversation.language) == (None,) * 3


def test_sharegpt_records_map_roles_and_drop_system(tmp_path: Path) -> None:
    turns = [{"from": "system", "value": "You are a helpful assistant."}, *_sharegpt("hi", "hey")]
    record = {"id": "share-1", "conversations": turns, "model": "gpt-4"}
    (conversation,) = read_conversations(_jsonl(tmp_path, [record]))
    assert conversation.conversation_id == "share-1"
    assert [dict(m) for m in conversation.messages] == _chat("hi", "hey")
    assert conversation.intent is None  # the assistant's system prompt is not the user's intent
    assert conversation.metadata == {"model": "gpt-4"}


def test_openai_system_and_developer_messages_are_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [
        {"role": "system", "content": "Answer in French."},
        *_chat("bonjour", "bonjour !"),
        {"role": "developer", "content": "Stay short."},
        {"role": "user", "content": "merci"},
    ]
    path = _jsonl(tmp_path, [{"messages": messages, "intent": "You are a user greeting."}])
    with caplog.at_level(logging.INFO, logger=DATA_LOGGER):
        (conversation,) = read_conversations(path)
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user"]
    assert conversation.intent == "You are a user greeting."
    assert any("dropped 2 system messages" in r.getMessage() for r in caplog.records)


def test_text_parts_are_joined_and_other_parts_refused() -> None:
    parts = [{"type": "text", "text": "first line"}, {"type": "text", "text": "second"}]
    conversation = conversation_from_record({"messages": [{"role": "user", "content": parts}]})
    assert conversation.first_user_turn == "first line\nsecond"
    image = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(DataError, match=r"messages\[0\]\.content\[1\] must be a text part"):
        conversation_from_record({"messages": [{"role": "user", "content": image}]}, "f.jsonl:3")


def test_sharegpt_bad_role_names_the_format_fields(tmp_path: Path) -> None:
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "tool", "value": "x"}]}
    path = _jsonl(tmp_path, [record])
    with pytest.raises(DataError) as caught:
        read_conversations(path)
    assert str(caught.value).startswith(f"{path}:1: conversations[1].from must be 'human'")


def test_one_file_may_mix_formats_including_hub_rows(tmp_path: Path) -> None:
    wildchat = {
        "conversation_hash": "wc-1",
        "hashed_ip": "ip-9",
        "country": None,
        "language": "English",
        "model": "gpt-4",
        "conversation": [
            {"role": "user", "content": "fix my regex", "turn_identifier": 1},
            {"role": "assistant", "content": "Share it and I will look.", "turn_identifier": 1},
        ],
    }
    prism = {
        "conversation_id": "p-1",
        "user_id": "user3",
        "conversation_history": [
            {"role": "user", "content": "best tea?"},
            {"role": "model", "content": "Green.", "if_chosen": False},
            {"role": "model", "content": "Oolong.", "if_chosen": True},
        ],
    }
    records = [{"messages": _chat("a")}, {"conversations": _sharegpt("b", "c")}, wildchat, prism]
    loaded, report = load_conversations(DataConfig(path=str(_jsonl(tmp_path, records))))
    assert [c.first_user_turn for c in loaded] == ["a", "b", "fix my regex", "best tea?"]
    assert (loaded[2].conversation_id, loaded[2].user_id, loaded[2].country) == (
        "wc-1",
        "ip-9",
        None,
    )
    assert loaded[3].messages[-1]["content"] == "Oolong."
    assert dict(report.formats) == {"openai": 1, "sharegpt": 1, "wildchat": 1, "prism": 1}
    assert (report.records, report.loaded, report.skipped, report.derived_ids) == (4, 4, 0, 2)


def test_json_array_file_reads_and_names_lines(tmp_path: Path) -> None:
    good = {"conversations": _sharegpt("hi", "hello")}
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([good, {"messages": _chat("yo")}], indent=1), encoding="utf-8")
    assert [c.first_user_turn for c in read_conversations(path)] == ["hi", "yo"]
    bad = '[\n {"messages": [{"role": "user", "content": "a"}]},\n\n {"messages": []}\n]\n'
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:4: field 'messages' must be a non-empty list"):
        read_conversations(path)
    assert len(read_conversations(path, on_bad_record="skip")) == 1
    path.write_text('[\n {"messages": [{"role": "user", "content": "a"}]}\n {"x": 1}\n]')
    with pytest.raises(DataError, match=f"^{path}:3: invalid JSON .*cannot be read past"):
        read_conversations(path, on_bad_record="skip")  # a broken array is fatal either way


def test_write_then_read_round_trips_optional_fields(tmp_path: Path) -> None:
    records = [
        {"messages": _chat("one", "two")},
        {"conversations": _sharegpt("three"), "id": "x", "country": "Chile"},
    ]
    conversations = read_conversations(_jsonl(tmp_path, records))
    copy = tmp_path / "copy.jsonl"
    write_conversations(conversations, copy)
    assert "user_id" not in json.loads(copy.read_text().splitlines()[0])
    assert read_conversations(copy) == conversations


# --- datasets.Dataset and hub names ----------------------------------------------------------


def test_dataset_rows_in_either_format() -> None:
    trl = datasets.Dataset.from_list(
        [
            {"messages": _chat("plan a picnic", "Sure, where?"), "user_id": "u1"},
            {"messages": _chat("tell me a joke"), "user_id": None},
        ]
    )
    converted = conversations_from_rows(trl)
    assert [c.user_id for c in converted] == ["u1", None]
    assert converted[0].messages[1]["content"] == "Sure, where?"
    share = datasets.Dataset.from_list(
        [{"conversations": _sharegpt("hi", "hello")}, {"conversations": _sharegpt("bye")}]
    )
    config = DataConfig(languages=(), dedup_threshold=None, fractions=(1.0, 0.0, 0.0))
    prepared = prepare_conversations(config, share)
    assert [c.first_user_turn for c in prepared.splits.train] == ["hi", "bye"]
    assert prepared.load is not None and prepared.load.source == "dataset"
    assert (prepared.loaded, prepared.without_user, prepared.without_language) == (2, 2, 2)


def test_dataset_row_errors_name_the_row() -> None:
    rows = datasets.Dataset.from_list(
        [{"messages": _chat("ok")}, {"messages": [{"role": "assistant", "content": "hi"}]}]
    )
    with pytest.raises(DataError, match=r"^chats\[1\]: the conversation has no user message"):
        conversations_from_rows(rows, name="chats")
    with pytest.raises(DataError, match="pass one split"):
        conversations_from_rows(datasets.DatasetDict({"train": rows}))


def test_hub_name_offline_is_a_clear_error() -> None:
    assert datasets.config.HF_HUB_OFFLINE  # tests run offline (tests/conftest.py)
    with pytest.raises(DataError) as caught:
        load_hub_conversations("someone/my-chats", split="train")
    message = str(caught.value)
    assert "'someone/my-chats'" in message and "HF_HUB_OFFLINE" in message
    config = DataConfig(source="hub", hub_name="someone/my-chats")
    with pytest.raises(DataError, match=r"someone/my-chats.*HF_HUB_OFFLINE"):
        prepare_conversations(config)
    with pytest.raises(DataError, match="hub_name"):
        prepare_conversations(DataConfig(source="hub"))
    with pytest.raises(DataError, match="unknown data source 'sharegpt'"):
        prepare_conversations(DataConfig(source="sharegpt"))


# --- bad records -----------------------------------------------------------------------------


def _mixed_file(tmp_path: Path) -> Path:
    return _jsonl(
        tmp_path,
        [
            {"messages": _chat("fine one")},
            "{not json",
            {"messages": [{"role": "tool", "content": "x"}]},
            "",
            {"messages": _chat("fine two"), "conversation_id": "a"},
            {"messages": _chat("fine three"), "conversation_id": "a"},
            {"messages": _chat("fine four")},
        ],
    )


def test_bad_records_stop_the_read_by_default(tmp_path: Path) -> None:
    path = _mixed_file(tmp_path)
    with pytest.raises(DataError, match=f"^{path}:2: invalid JSON"):
        read_conversations(path)


def test_skipped_records_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _mixed_file(tmp_path)
    config = DataConfig(path=str(path), on_bad_record="skip")
    with caplog.at_level(logging.INFO, logger=DATA_LOGGER):
        loaded, report = load_conversations(config)
    assert [c.first_user_turn for c in loaded] == ["fine one", "fine two", "fine four"]
    assert (report.records, report.loaded, report.skipped) == (6, 3, 3)
    assert report.reasons == (
        f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:3: messages[0].role must be 'user', 'assistant' or 'system', got 'tool'",
        f"{path}:6: duplicate conversation_id 'a' (first at {path}:5)",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 bad records" in warnings[0]
    assert f"{path}:6: duplicate" in warnings[0]


def test_only_the_first_reasons_are_kept(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, ["[1]"] * 8 + [{"messages": _chat("kept")}])
    loaded, report = load_conversations(DataConfig(path=str(path), on_bad_record="skip"))
    assert len(loaded) == 1 and report.skipped == 8
    assert [reason.split(": ")[0] for reason in report.reasons] == [
        f"{path}:{n}" for n in range(1, 6)
    ]


def test_undecodable_line_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"messages": _chat("fine")}).encode()
    path.write_bytes(good + b"\n" + b'{"messages": "caf\xe9"}\n' + good.replace(b"fine", b"ok"))
    with pytest.raises(DataError, match=f"^{path}:2: not UTF-8"):
        read_conversations(path)
    assert [c.first_user_turn for c in read_conversations(path, on_bad_record="skip")] == [
        "fine",
        "ok",
    ]


def test_repeated_content_gets_numbered_ids(tmp_path: Path) -> None:
    record = {"messages": _chat("hi", "hello")}
    first, second, third = read_conversations(_jsonl(tmp_path, [record] * 3))
    assert second.conversation_id == first.conversation_id + "#2"
    assert third.conversation_id == first.conversation_id + "#3"


def test_bad_policy_and_limit(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [{"messages": _chat(str(n))} for n in range(5)])
    with pytest.raises(DataError, match="on_bad_record must be one of"):
        read_conversations(path, on_bad_record="ignore")
    loaded, report = load_conversations(DataConfig(path=str(path), limit=2))
    assert [c.first_user_turn for c in loaded] == ["0", "1"] and report.records == 2


# --- fallbacks: users and languages ----------------------------------------------------------


def _anonymous(first: str, language: str | None = "English") -> Conversation:
    messages = ({"role": "user", "content": first}, {"role": "assistant", "content": "ok"})
    return Conversation(f"id-{first}", None, None, language, messages)


def test_split_falls_back_to_the_conversation(caplog: pytest.LogCaptureFixture) -> None:
    population = [_anonymous(f"question {n}") for n in range(200)]
    copies = [
        Conversation(f"copy-{n}", None, None, "English", population[0].messages) for n in range(3)
    ]
    with caplog.at_level(logging.INFO, logger=CURATION_LOGGER):
        splits = assign_splits(population + copies, seed=1)
    # 200 anonymous conversations are 200 users, cut 90/5/5
    assert [len({c.first_user_turn for c in part}) for part in splits] == [180, 10, 10]
    home = [
        i for i, part in enumerate(splits) for c in part if c.messages == population[0].messages
    ]
    assert len(home) == 4 and len(set(home)) == 1  # identical conversations share a split
    messages = [r.getMessage() for r in caplog.records]
    assert sum("have no user id" in m for m in messages) == 1
    assert any("203 of 203 conversations have no user id" in m for m in messages)
    again = assign_splits(population + copies, seed=1)
    assert [[c.conversation_id for c in p] for p in again] == [
        [c.conversation_id for c in p] for p in splits
    ]


def test_known_country_wins_over_unknown() -> None:
    messages = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"})
    users = [
        Conversation(f"c{n}-{k}", f"u{n}", country, "English", messages)
        for n in range(40)
        for k, country in enumerate(("Chile", None, None) if n == 0 else ("Ghana",))
    ]
    splits = assign_splits(users, seed=0, fractions=(0.5, 0.25, 0.25))
    holding = {i for i, part in enumerate(splits) for c in part if c.user_id == "u0"}
    assert len(holding) == 1  # u0's unknown-country conversations follow the user


def test_language_filter_keeps_or_drops_unknown(caplog: pytest.LogCaptureFixture) -> None:
    mixed = [
        _anonymous("a"),
        _anonymous("b", None),
        _anonymous("c", "French"),
        _anonymous("d", None),
    ]
    with caplog.at_level(logging.INFO, logger=DATA_LOGGER):
        kept = filter_language(mixed)
    assert [c.first_user_turn for c in kept] == ["a", "b", "d"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 conversations have no language; kept unfiltered" in warnings[0]
    assert [c.first_user_turn for c in filter_language(mixed, unknown="drop")] == ["a"]
    with pytest.raises(DataError, match="unknown_language"):
        filter_language(mixed, unknown="guess")


def test_messages_only_file_through_the_pipeline(tmp_path: Path) -> None:
    records = [{"messages": _chat(f"how do I {task}?", "Like this.")} for task in "abcdefgh"]
    records.append({"messages": _chat("comment faire?", "Ainsi."), "language": "French"})
    config = DataConfig(path=str(_jsonl(tmp_path, records)), fractions=(0.5, 0.25, 0.25))
    prepared = prepare_conversations(config)
    assert (prepared.loaded, prepared.after_language) == (9, 8)  # French dropped, unknown kept
    assert (prepared.without_language, prepared.without_user) == (8, 8)
    assert sorted(len(part) for part in prepared.splits) == [2, 2, 4]


def test_train_yaml_lists_every_data_key_with_its_default() -> None:
    conf = Path(__file__).resolve().parents[2] / "experiments" / "conf" / "train.yaml"
    listed = OmegaConf.to_container(OmegaConf.load(conf).data)
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(DataConfig()).items()}
    assert listed == defaults  # so `data.KEY=...` overrides any key under every preset
