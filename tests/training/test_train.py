"""Tests of the trainer (userlm_env.training.train), its Hydra presets, and the CPU round trip:
train smoke_cpu on the synthetic fixture, then simulate a user with the checkpoint in the env."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from userlm_env.chat_format import ChatTemplateError, render_user_prompt
from userlm_env.errors import ModelUnavailableError
from userlm_env.models import EMBEDDED_MODEL
from userlm_env.training.data import DataConfig
from userlm_env.training.flip import flip_conversation, tokenize_flip
from userlm_env.training.intents import IntentConfig
from userlm_env.training.train import (
    TrainConfig,
    build_model,
    gradient_accumulation_steps,
    load_tokenizer,
    train_userlm,
    training_arguments,
)
from userlm_env.types import END_MARKER, Intent

from .conftest import FIXTURE, TINY_ARCHITECTURE

CONF = Path(__file__).resolve().parents[2] / "experiments" / "conf"
PRESETS = ("smoke_cpu", "userlm_1b", "userlm_8b")


def _compose(preset: str, overrides: list[str] | None = None) -> Any:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="train", overrides=[f"train={preset}", *(overrides or [])])


def _tiny_config(output_dir: Path, **overrides: Any) -> TrainConfig:
    fields = {
        "model": EMBEDDED_MODEL,
        "init": "random",
        "architecture": dict(TINY_ARCHITECTURE),
        "output_dir": str(output_dir),
        "learning_rate": 1e-2,
        "effective_batch_size": 4,
        "per_device_batch_size": 4,
        "max_steps": 2,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 1,
        "gradient_checkpointing": False,
        "missing_intent": "skip",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return TrainConfig(**{**fields, **overrides})


# --- configuration ---------------------------------------------------------------------------


def test_paper_recipe_becomes_training_arguments(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), use_cpu=True)
    args = training_arguments(config)
    assert args.learning_rate == 2e-5 and config.max_length == 2048
    assert args.gradient_accumulation_steps == 256  # 1024 samples / (4 per device x 1 device)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 1024
    assert args.bf16 is False  # CPU
    assert getattr(args, "train_sampling_strategy", "group_by_length") == "group_by_length"
    # transformers renamed gradient_checkpointing to activation_checkpointing; either is on
    checkpointing = [
        getattr(args, n, None) for n in ("activation_checkpointing", "gradient_checkpointing")
    ]
    assert True in checkpointing
    assert args.remove_unused_columns is False
    assert gradient_accumulation_steps(config, world_size=4) == 64  # 4 GPUs
    assert gradient_accumulation_steps(TrainConfig(per_device_batch_size=3), 1) == 341
    assert gradient_accumulation_steps(TrainConfig(effective_batch_size=2), 8) == 1
    assert config.sample_mode == "conversation" and config.packing is False
    assert args.include_num_input_tokens_seen == "non_padding"
    packed = training_arguments(TrainConfig(output_dir=str(tmp_path), use_cpu=True, packing=True))
    assert packed.include_num_input_tokens_seen == "all"  # no padding; EOS may be the pad id
    with pytest.raises(ValueError, match="sample_mode"):
        TrainConfig(sample_mode="packed")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_and_instantiate(preset: str) -> None:
    cfg = _compose(preset)
    train = instantiate(cfg.train, _convert_="all")
    data = instantiate(cfg.data, _convert_="all")
    assert isinstance(train, TrainConfig) and isinstance(data, DataConfig)
    assert train.sample_mode == "conversation" and train.packing is False
    assert instantiate(_compose(preset, ["train.sample_mode=flipped"]).train).sample_mode == (
        "flipped"
    )
    if cfg.intents:
        assert instantiate(cfg.intents.llm).model
        assert isinstance(instantiate(cfg.intents.config), IntentConfig)
    if preset != "smoke_cpu":
        assert (train.learning_rate, train.effective_batch_size, train.max_length) == (
            2e-5,
            1024,
            2048,
        )
        assert train.chat_template and data.source == "wildchat" and data.languages == ["English"]


def test_eight_b_preset_inherits_the_one_b_recipe() -> None:
    one, eight = (instantiate(_compose(p).train, _convert_="all") for p in PRESETS[1:])
    assert eight.model == "meta-llama/Meta-Llama-3-8B" and one.model == "meta-llama/Llama-3.2-1B"
    assert eight.chat_template == one.chat_template and eight.learning_rate == one.learning_rate


@pytest.mark.parametrize("name", ["fsdp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_are_multi_gpu_bf16(name: str) -> None:
    config = yaml.safe_load((CONF / "accelerate" / name).read_text())
    assert config["distributed_type"] in {"FSDP", "DEEPSPEED"}
    assert config["mixed_precision"] == "bf16" and config["num_processes"] > 1


def test_llama3_template_renders_a_user_turn_opening(tmp_path: Path, tokenizer: Any) -> None:
    template = instantiate(_compose("userlm_1b").train).chat_template
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    bare.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ChatTemplateError, match="chat_template"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "llama3.jinja").write_text(template)
    for source in (template, str(tmp_path / "llama3.jinja")):
        loaded = load_tokenizer(str(tmp_path), chat_template=source)
        prompt = render_user_prompt(loaded, "You are a user chatting ...", [])
        assert prompt.endswith(
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a user chatting ...<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
        )


def test_unknown_model_is_a_typed_error() -> None:
    with pytest.raises(ModelUnavailableError, match="no tokenizer at path") as caught:
        load_tokenizer("/no/such/checkpoint")
    assert "smollm2-135m-instruct" in str(caught.value)  # the message names the alternatives


def test_random_model_has_the_end_token(tmp_path: Path, tokenizer: Any) -> None:
    model = build_model(_tiny_config(tmp_path), tokenizer)
    assert tokenizer.convert_tokens_to_ids(END_MARKER) == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="init"):
        build_model(_tiny_config(tmp_path, init="scratch"), tokenizer)


# --- training runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_the_latest_checkpoint(tmp_path: Path, conversations: list[Any]) -> None:
    first = train_userlm(_tiny_config(tmp_path, resume_from_checkpoint=True), conversations)
    assert first.global_step == 2 and (tmp_path / "checkpoint-2").is_dir()
    resumed = train_userlm(
        _tiny_config(tmp_path, max_steps=3, resume_from_checkpoint=True), conversations
    )
    assert resumed.global_step == 3
    assert [step for step, _ in resumed.losses] == [3]  # steps 1-2 were not run again


def _end_probability(model: Any, tokenizer: Any, conversations: list[Any]) -> float:
    """Mean probability of the end token right after each conversation's last assistant turn."""
    import torch

    end_id = tokenizer.convert_tokens_to_ids(END_MARKER)
    probabilities = []
    for conversation in conversations:
        sample = tokenize_flip(tokenizer, flip_conversation(conversation)[-1], 1024)
        assert sample is not None and sample.is_end
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([sample.input_ids[: sample.prompt_tokens]])
            ).logits
        probabilities.append(torch.softmax(logits[0, -1], dim=-1)[end_id].item())
    return sum(probabilities) / len(probabilities)


@pytest.mark.slow
def test_smoke_round_trip(tmp_path: Path, apples_intent: Intent) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.train import run
    from simulators import make_simulator
    from userlm_env import ConversationEnv
    from userlm_env.training.data import read_conversations

    cfg = _compose("smoke_cpu", [f"data.path={FIXTURE}", "+train.disable_tqdm=true"])
    summary = run(cfg, tmp_path)
    assert summary["steps"] == 12 and summary["last_loss"] < summary["first_loss"] - 3.0
    model_dir = tmp_path / "model"
    trained = [c for c in read_conversations(tmp_path / "splits" / "train.jsonl") if c.intent]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    untrained = build_model(instantiate(cfg.train, _convert_="all"), load_tokenizer(EMBEDDED_MODEL))
    before = _end_probability(untrained, tokenizer, trained)
    after = _end_probability(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, trained)
    assert after > 100 * before and after > 0.01

    simulator = make_simulator(
        "userlm", model=str(model_dir), allow_end=False, max_new_tokens=12, max_tries=3
    )
    assert simulator.loaded.end_marker_id == tokenizer.convert_tokens_to_ids(END_MARKER)
    env = ConversationEnv(simulator=simulator, intents=[apples_intent], max_replies=2)
    observation, info = env.reset(seed=0)
    assert observation.strip() and info["user_turns"] == 1
    done, steps = False, 0
    while not done:
        observation, reward, terminated, truncated, info = env.step("Could you say more?")
        done, steps = terminated or truncated, steps + 1
    assert steps == 2 and truncated and reward == 0.0
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant"]


@pytest.mark.slow
def test_throughput_compare_mode_reports_the_ratios() -> None:
    """benchmarks/train_throughput.py's default mode on a few episodes: exact token counts."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput_compare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.compare(4, 2)
    assert report["user_turns"]["min"] >= 3 and report["conversations"] == 4
    runs, ratios = report["runs"], report["ratios"]
    assert ratios["tokens_flipped_over_conversation"] >= 1.5 and ratios["target_tokens_equal"]
    assert runs["flipped_padded"]["sequences"] == sum(c + 1 for c in (3, 4, 5, 6))
    for mode in ("flipped", "conversation"):
        packed, padded = runs[f"{mode}_packed"], runs[f"{mode}_padded"]
        assert packed["processed_tokens"] == packed["tokens"] == padded["tokens"]
        assert padded["processed_tokens"] >= padded["tokens"]
    json.dumps(report)


@pytest.mark.slow
def test_messages_only_data_trains_a_user_that_speaks_first_and_plays_episodes(
    tmp_path: Path, apples_intent: Intent
) -> None:
    """The round trip from data as people have it: a JSONL of ``{"messages", "intent"}`` only
    (no ids, country or language) trains a checkpoint that, with the simulator's default end
    setting, opens every conversation with a spoken turn and plays whole episodes."""
    from experiments.train import run
    from simulators import make_simulator
    from userlm_env import ConversationEnv

    plain = tmp_path / "plain.jsonl"
    with FIXTURE.open(encoding="utf-8") as source, plain.open("w", encoding="utf-8") as out:
        for line in source:
            record = json.loads(line)
            kept = {k: record[k] for k in ("messages", "intent") if k in record}
            out.write(json.dumps(kept))
            out.write("\n")
    cfg = _compose("smoke_cpu", [f"data.path={plain}", "+train.disable_tqdm=true"])
    summary = run(cfg, tmp_path / "run")
    assert summary["steps"] > 0
    simulator = make_simulator("userlm", model=str(tmp_path / "run" / "model"), max_new_tokens=12)
    env = ConversationEnv(simulator=simulator, intents=[apples_intent], max_replies=3)
    for seed in range(4):
        observation, info = env.reset(seed=seed)
        assert observation.strip() and info["user_turns"] == 1 and not info["user_ended"]
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step("Could you say more?")
            done = terminated or truncated
        assert info["termination_reason"] in ("user_ended", "max_replies")
        assert info["messages"][0]["role"] == "user" and info["messages"][0]["content"].strip()


def test_gpu_check_script_says_it_needs_cuda_on_a_cpu_machine() -> None:
    """The README's GPU command, run where it cannot: a clear message and exit status 2 (the
    GPU run itself needs a lent GPU machine; ``train_throughput.py`` is its CPU counterpart)."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train_check.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "train_throughput.py" in done.stderr


@pytest.mark.slow
def test_lora_smoke_preset_trains_and_its_merged_checkpoint_speaks(
    tmp_path: Path, apples_intent: Intent
) -> None:
    """The README's LoRA command: ``train=lora_smoke_cpu`` trains, saves a merged checkpoint
    without adapter files, and the simulator loads it and speaks first."""
    from experiments.train import run
    from simulators import make_simulator
    from userlm_env import ConversationEnv

    cfg = _compose("lora_smoke_cpu", [f"data.path={FIXTURE}", "+train.disable_tqdm=true"])
    summary = run(cfg, tmp_path)
    model_dir = tmp_path / "model"
    assert summary["steps"] > 0 and (model_dir / "config.json").is_file()
    assert not (model_dir / "adapter_config.json").exists()  # merged: a plain checkpoint
    simulator = make_simulator("userlm", model=str(model_dir), max_new_tokens=8, max_tries=2)
    observation, info = ConversationEnv(simulator=simulator, intents=[apples_intent]).reset(seed=0)
    assert observation.strip() and info["user_turns"] == 1
