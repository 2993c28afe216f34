"""Tests of LoRA adapters (userlm_env.training.adapters): a few Trainer steps on a tiny random
Llama train only the adapters; the merged checkpoint and the adapter folder both rebuild the
trained model; the merged checkpoint plays a user in the env; the LoRA presets compose."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from userlm_env.errors import ModelUnavailableError
from userlm_env.models import LoadedModel, load_tokenizer
from userlm_env.training.adapters import (
    AdapterConfig,
    AdapterError,
    adapter_config,
    apply_adapters,
    is_adapter_folder,
    load_adapter_model,
    merge_adapter_folder,
    save_trained,
    trainable_parameter_counts,
)
from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    FlipCollator,
    FlipConfig,
    FlipDataset,
    add_end_token,
    flip_conversations,
)
from userlm_env.training.train import TrainConfig
from userlm_env.types import END_MARKER, Intent

CONF = Path(__file__).resolve().parents[2] / "experiments" / "conf"
LLAMA3_HEADERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _lora(**settings: Any) -> AdapterConfig:
    """Small LoRA settings for the tiny model (no dropout: runs compare exactly)."""
    return AdapterConfig(**{"r": 4, "alpha": 8, "dropout": 0.0, **settings})


def _train(model: Any, tokenizer: Any, conversations: list[Conversation], out: Path) -> Any:
    """Four Trainer steps on the flipped samples of two conversations; the model in eval mode."""
    flipped = flip_conversations(conversations[:2], tokenizer, FlipConfig(max_length=256))
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=FlipDataset(flipped.samples),
        data_collator=FlipCollator(tokenizer.pad_token_id),
    ).train()
    return model.eval()


def _probe(tokenizer: Any) -> Any:
    """A short input whose logits are compared; it holds the end marker (a trained row)."""
    text = "How long do I boil eggs? " + END_MARKER
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)])


def _logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _stored(folder: Path) -> list[str]:
    """The tensor names in an adapter folder's weight file."""
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        return list(weights.keys())


@pytest.fixture()
def saved_base(tiny_model: Any, tokenizer: Any, tmp_path: Path) -> Path:
    """The tiny random model saved as a checkpoint (a base an adapter can name)."""
    folder = tmp_path / "base"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- settings --------------------------------------------------------------------------------


def test_settings_are_checked_and_come_from_a_preset_mapping() -> None:
    assert adapter_config(None) is None
    default = AdapterConfig()
    assert (default.method, default.target_modules, default.save) == (
        "lora",
        "all-linear",
        "merged",
    )
    assert default.trainable_tokens == [END_MARKER]
    config = adapter_config({"r": 8, "target_modules": ("q_proj", "v_proj"), "save": "adapter"})
    assert config == AdapterConfig(r=8, target_modules=["q_proj", "v_proj"], save="adapter")
    assert adapter_config(config) is config
    with pytest.raises(AdapterError, match="unknown adapter settings \\['rank'\\]"):
        adapter_config({"rank": 8})
    bad: list[dict[str, Any]] = [
        {"method": "ia3"},
        {"save": "both"},
        {"r": 0},
        {"dropout": 1.0},
        {"target_modules": []},
        {"trainable_tokens": END_MARKER},
    ]
    for settings in bad:
        with pytest.raises(AdapterError):
            AdapterConfig(**settings)


def test_no_adapters_leaves_the_model_as_it_is(tiny_model: Any) -> None:
    assert apply_adapters(tiny_model, None) is tiny_model
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_trainable_tokens_must_be_tokens_of_the_model(tiny_model: Any, tokenizer: Any) -> None:
    with pytest.raises(AdapterError, match="is not one token"):
        apply_adapters(tiny_model, _lora(), tokenizer)  # end marker not added yet
    with pytest.raises(AdapterError, match="needs the tokenizer"):
        apply_adapters(tiny_model, _lora())
    add_end_token(tokenizer)  # in the tokenizer, but the embeddings were not resized
    with pytest.raises(AdapterError, match="embedding rows"):
        apply_adapters(tiny_model, _lora(), tokenizer)


@pytest.mark.parametrize("float32_trainable", [True, False])
def test_trainable_dtype_under_bf16_weights(
    tiny_model: Any, tokenizer: Any, float32_trainable: bool
) -> None:
    add_end_token(tokenizer, tiny_model)
    config = _lora(float32_trainable=float32_trainable)
    model = apply_adapters(tiny_model.to(torch.bfloat16), config, tokenizer)
    dtypes = {(p.dtype, p.requires_grad) for p in model.parameters()}
    trained = torch.float32 if float32_trainable else torch.bfloat16
    assert dtypes == {(torch.bfloat16, False), (trained, True)}


# --- training --------------------------------------------------------------------------------


def test_training_changes_only_the_adapters(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation], tmp_path: Path
) -> None:
    end_id = add_end_token(tokenizer, tiny_model)
    base_parameters = list(tiny_model.parameters())
    base_values = [p.detach().clone() for p in base_parameters]
    model = apply_adapters(tiny_model, _lora(), tokenizer)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n or "trainable_tokens" in n) for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)
    counted, total = trainable_parameter_counts(model)
    assert counted == sum(v.numel() for v in trainable.values()) and counted < total / 50

    _train(model, tokenizer, conversations, tmp_path / "run")

    assert all(torch.equal(p, v) for p, v in zip(base_parameters, base_values, strict=True))
    assert not any(p.requires_grad for p in base_parameters)
    after = dict(model.named_parameters())
    changed = [n for n, before in trainable.items() if not torch.equal(after[n], before)]
    assert set(changed) == set(trainable)  # every adapter weight moved (LoRA B starts at zero)
    (rows,) = [after[n] for n in trainable if "trainable_tokens" in n]
    assert rows.shape == (1, tiny_model.config.hidden_size)  # one row: the end marker's, tied
    assert end_id == len(tokenizer) - 1


def test_merged_checkpoint_reloads_as_the_trained_model(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation], tmp_path: Path
) -> None:
    add_end_token(tokenizer, tiny_model)
    ids = _probe(tokenizer)
    untrained = _logits(copy.deepcopy(tiny_model), ids)
    model = _train(
        apply_adapters(tiny_model, _lora(), tokenizer), tokenizer, conversations, tmp_path / "run"
    )
    trained = _logits(model, ids)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "adapter_config.json").write_text("{}")  # left by an earlier save
    folder = save_trained(model, tokenizer, tmp_path / "merged", _lora())

    assert not is_adapter_folder(folder) and (folder / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert reloaded.config.vocab_size == len(tokenizer)
    torch.testing.assert_close(_logits(reloaded, ids), trained, atol=1e-5, rtol=1e-4)
    assert (trained - untrained).abs().max() > 1e-2  # training did change the outputs


def test_adapter_folder_rebuilds_the_trained_model(
    saved_base: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(str(saved_base))
    base = AutoModelForCausalLM.from_pretrained(saved_base)
    add_end_token(tokenizer, base)
    config = _lora(save="adapter")
    model = _train(
        apply_adapters(base, config, tokenizer), tokenizer, conversations, tmp_path / "run"
    )
    ids = _probe(tokenizer)
    trained = _logits(model, ids)
    folder = save_trained(
        model, tokenizer, tmp_path / "adapter", config, base_model=str(saved_base)
    )

    assert is_adapter_folder(folder) and not (folder / "config.json").exists()
    keys = _stored(folder)
    assert any("lora_A" in k for k in keys) and any("trainable_tokens" in k for k in keys)
    assert not any(k.endswith("embed_tokens.weight") for k in keys)  # the end row is enough
    assert load_tokenizer(str(folder)).convert_tokens_to_ids(END_MARKER) == len(tokenizer) - 1
    rebuilt = load_adapter_model(folder)
    torch.testing.assert_close(_logits(rebuilt, ids), trained, atol=1e-5, rtol=1e-4)

    merged = merge_adapter_folder(folder, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(merged)
    torch.testing.assert_close(_logits(reloaded, ids), trained, atol=1e-5, rtol=1e-4)
    with pytest.raises(AdapterError, match="other than"):
        merge_adapter_folder(folder, folder)


def test_untrained_added_rows_are_stored_with_the_adapter(
    saved_base: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(str(saved_base))
    base = AutoModelForCausalLM.from_pretrained(saved_base)
    add_end_token(tokenizer, base)  # a new, randomly initialised row that LoRA does not train
    config = _lora(trainable_tokens=[], save="adapter")
    model = _train(
        apply_adapters(base, config, tokenizer), tokenizer, conversations, tmp_path / "run"
    )
    ids = _probe(tokenizer)
    trained = _logits(model, ids)
    folder = save_trained(
        model, tokenizer, tmp_path / "adapter", config, base_model=str(saved_base)
    )
    torch.testing.assert_close(
        _logits(load_adapter_model(folder), ids), trained, atol=1e-5, rtol=1e-4
    )
    assert any(k.endswith("embed_tokens.weight") for k in _stored(folder))


def test_adapter_form_needs_a_base_checkpoint(
    tiny_model: Any, tokenizer: Any, tmp_path: Path
) -> None:
    add_end_token(tokenizer, tiny_model)
    config = _lora(save="adapter")
    model = apply_adapters(tiny_model, config, tokenizer)
    with pytest.raises(AdapterError, match="save='merged'"):
        save_trained(model, tokenizer, tmp_path / "adapter", config)
    with pytest.raises(AdapterError, match="PeftModel"):
        save_trained(tiny_model, tokenizer, tmp_path / "plain", config)


def test_adapter_folder_with_a_missing_base_is_a_typed_error(
    saved_base: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(str(saved_base))
    base = AutoModelForCausalLM.from_pretrained(saved_base)
    add_end_token(tokenizer, base)
    config = _lora(save="adapter")
    model = apply_adapters(base, config, tokenizer)
    gone = str(tmp_path / "moved-away")
    folder = save_trained(model, tokenizer, tmp_path / "adapter", config, base_model=gone)
    with pytest.raises(ModelUnavailableError, match="needs its base model"):
        load_adapter_model(folder)


# --- the trained model as a user -------------------------------------------------------------


def _first_turn(model: str | LoadedModel, intent: Intent) -> tuple[str, dict[str, Any]]:
    from simulators import make_simulator
    from userlm_env import ConversationEnv

    simulator = make_simulator("userlm", model=model, max_new_tokens=8, max_tries=2)
    env = ConversationEnv(simulator=simulator, intents=[intent], max_replies=2)
    return env.reset(seed=0)


@pytest.mark.slow
def test_merged_and_adapter_checkpoints_speak_first(
    saved_base: Path, conversations: list[Conversation], tmp_path: Path, apples_intent: Intent
) -> None:
    tokenizer = load_tokenizer(str(saved_base))
    base = AutoModelForCausalLM.from_pretrained(saved_base)
    end_id = add_end_token(tokenizer, base)
    config = _lora(save="adapter")
    model = _train(
        apply_adapters(base, config, tokenizer), tokenizer, conversations, tmp_path / "run"
    )
    adapter = save_trained(
        model, tokenizer, tmp_path / "adapter", config, base_model=str(saved_base)
    )
    merged = save_trained(model, tokenizer, tmp_path / "merged", _lora())

    observation, info = _first_turn(str(merged), apples_intent)  # by path, as users pass it
    assert observation.strip() and info["user_turns"] == 1

    # An adapter folder, loaded by this module (userlm_env.models does not read adapters).
    adapter_tokenizer = load_tokenizer(str(adapter))
    loaded = LoadedModel(
        name=str(adapter),
        tokenizer=adapter_tokenizer,
        model=load_adapter_model(adapter, adapter_tokenizer),
        source=str(adapter),
        end_marker_id=end_id,
    )
    same_observation, same_info = _first_turn(loaded, apples_intent)
    assert same_observation == observation and same_info["user_turns"] == 1


# --- presets ---------------------------------------------------------------------------------


def _compose(preset: str) -> Any:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="train", overrides=[f"train={preset}"])


@pytest.mark.parametrize(
    ("preset", "full"),
    [("lora_smoke_cpu", "smoke_cpu"), ("lora_1b", "userlm_1b"), ("lora_8b", "userlm_8b")],
)
def test_lora_presets_are_their_full_recipe_plus_adapters(preset: str, full: str) -> None:
    cfg, full_cfg = _compose(preset), _compose(full)
    train = OmegaConf.to_container(cfg.train, resolve=True)
    assert isinstance(train, dict)
    adapters = adapter_config(train.pop("adapters"))
    assert isinstance(adapters, AdapterConfig) and adapters.save == "merged"
    assert END_MARKER in adapters.trainable_tokens
    assert set(train) - {"_target_"} <= {f.name for f in fields(TrainConfig)}
    assert isinstance(instantiate(train, _convert_="all"), TrainConfig)
    assert cfg.data == full_cfg.data and cfg.train.model == full_cfg.train.model
    assert cfg.train.get("chat_template") == full_cfg.train.get("chat_template")
    if preset != "lora_smoke_cpu":
        assert cfg.train.learning_rate > 4 * full_cfg.train.learning_rate
        assert cfg.train.output_dir != full_cfg.train.output_dir
        # the header tokens that the Llama-3 template writes get trained rows
        assert all(t in cfg.train.chat_template for t in LLAMA3_HEADERS)
        assert set(LLAMA3_HEADERS) <= set(adapters.trainable_tokens)
