"""Tests of :mod:`userlm_env.json_cache`: hits, misses, atomic writes and the corruption policy.

The policy is also checked through its users: the LLM client (against the scripted fault
server) and an LLM judge (with a scripted client).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.fault_server import FaultServer
from tests.metrics.data import ScriptedClient
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.metrics.intrinsic import IntentAdherenceJudge
from userlm_env.types import Message

GARBAGE = b"\x00\xff{not json at all\x9c"


def _corrupt(path: Path) -> None:
    path.write_bytes(GARBAGE)


def test_cache_key_is_stable_and_order_sensitive() -> None:
    assert cache_key("a", {"y": 1, "x": 2}) == cache_key("a", {"x": 2, "y": 1})
    assert cache_key("a", "b") != cache_key("b", "a")
    assert len(cache_key(object)) == 64  # unencodable parts go by their repr


def test_put_then_get_hits_and_other_keys_miss(tmp_path: Path) -> None:
    cache = JsonCache(tmp_path)
    key = cache_key("question", 1)
    assert cache.get(key) is None
    cache.put(key, {"answer": [1, 2], "text": "é"})
    assert cache.get(key) == {"answer": [1, 2], "text": "é"}
    assert cache.get(cache_key("question", 2)) is None
    assert cache.path(key) == tmp_path / key[:2] / f"{key}.json"
    assert cache.corrupt_entries == 0


def test_disabled_cache_misses_and_writes_nothing(tmp_path: Path) -> None:
    cache = JsonCache(None)
    cache.put("abcd", 1)
    assert cache.get("abcd") is None
    assert not cache.enabled
    with pytest.raises(ValueError, match="disabled"):
        cache.path("abcd")
    assert list(tmp_path.iterdir()) == []


def test_put_overwrites_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    cache = JsonCache(tmp_path)
    key = cache_key("k")
    cache.put(key, "old")
    cache.put(key, "new")
    assert cache.get(key) == "new"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]


def test_failed_write_keeps_the_old_entry(tmp_path: Path) -> None:
    cache = JsonCache(tmp_path)
    key = cache_key("k")
    cache.put(key, "old")
    with pytest.raises(TypeError):
        cache.put(key, {"unencodable": object()})
    assert cache.get(key) == "old"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_corrupt_entry_warns_once_counts_misses_and_is_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = JsonCache(tmp_path)
    key = cache_key("k")
    cache.put(key, {"v": 1})
    _corrupt(cache.path(key))
    with caplog.at_level(logging.WARNING, logger="userlm_env.json_cache"):
        assert cache.get(key) is None
        assert cache.get(key) is None  # still corrupt: a miss, but no second warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(cache.path(key)) in warnings[0].getMessage()
    assert "Error" in warnings[0].getMessage()  # names the error
    assert cache.corrupt_entries == 1
    cache.put(key, {"v": 2})
    assert cache.get(key) == {"v": 2}
    assert cache.corrupt_entries == 1


def test_entry_the_decoder_rejects_is_corrupt(tmp_path: Path) -> None:
    cache = JsonCache(tmp_path)
    cache.put("ab01", [1, 2])
    assert cache.get("ab01", lambda value: dict(value)) is None  # a list is no mapping
    assert cache.get("ab01", tuple) == (1, 2)
    assert cache.corrupt_entries == 1


def test_corrupt_llm_cache_entry_is_refetched_and_overwritten(
    fault_server: FaultServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"api_base": fault_server.api_base, "api_key": "k", "cache_dir": str(tmp_path)}
    config = LLMConfig("openai/fault-model", **settings)  # type: ignore[arg-type]
    ask: list[Message] = [{"role": "user", "content": "hi"}]
    (first,) = LLMClient(config).chat_many([ask])
    (entry,) = tmp_path.rglob("*.json")
    _corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="userlm_env.json_cache"):
        (again,) = LLMClient(config).chat_many([ask])
    assert not (first.cached or again.cached)
    assert len(fault_server.requests) == 2  # refetched
    assert any(str(entry) in record.getMessage() for record in caplog.records)
    assert json.loads(entry.read_text(encoding="utf-8"))["text"] == again.text  # overwritten
    (third,) = LLMClient(config).chat_many([ask])
    assert third.cached and third.text == again.text and len(fault_server.requests) == 2


def test_corrupt_judge_cache_entry_is_judged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    item = ("What is 2 + 2?", "It is 4.", "Thanks!")
    IntentAdherenceJudge(ScriptedClient(['{"adheres": true}']), cache_dir=tmp_path).judge([item])
    (entry,) = tmp_path.rglob("*.json")
    _corrupt(entry)
    judge = IntentAdherenceJudge(ScriptedClient(['{"adheres": false}']), cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="userlm_env.json_cache"):
        assert judge.judge([item]) == [False]
    assert judge.cache.corrupt_entries == 1
    assert any(str(entry) in record.getMessage() for record in caplog.records)
    assert json.loads(entry.read_text(encoding="utf-8")) is False
