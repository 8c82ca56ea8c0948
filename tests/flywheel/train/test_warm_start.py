"""Warm start: training a candidate's adapter on from the champion's adapter instead of a fresh LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.config import LoraSettings
from flywheel.jobs import EXIT_CONFIG

CHAMPION_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
"""The champion's adapter: rank 4 on every linear layer (the default ``all-linear``)."""


def lora_weights(model) -> dict[str, object]:
    """The adapter's weights as ``save_pretrained`` writes them (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {key: value.detach().clone() for key, value in get_peft_model_state_dict(model).items()}


def saved_weights(adapter: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def champion_adapter(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking champion adapter of the tiny model: every LoRA weight random (a fresh B is 0)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from flywheel.train.trainer import lora_config

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, lora_config(CHAMPION_LORA, base))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    path = tmp_path_factory.mktemp("champion") / "adapter"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Eight short tool-free chats for train, two for validation."""
    root = tmp_path_factory.mktemp("chats")
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Route the request."},
                    {"role": "user", "content": f"Request {index}: where is my parcel?"},
                    {"role": "assistant", "content": ["billing", "shipping"][index % 2]},
                ],
                "tools": [],
            }
        )
        for index in range(10)
    ]
    (root / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (root / "validation.jsonl").write_text("\n".join(lines[8:]) + "\n")
    return str(root)


def base_model(tiny_model: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model)


def test_a_warm_start_begins_with_the_champions_weights_and_trains_them(
    tiny_model: str, champion_adapter: Path
) -> None:
    import torch

    from flywheel.train.trainer import FetchedAdapter, _lora_model

    settings = CHAMPION_LORA.model_copy(update={"dropout": 0.1})
    champion_copy = FetchedAdapter(str(champion_adapter), champion_adapter)
    model = _lora_model(base_model(tiny_model), settings, champion_copy)

    champion = saved_weights(champion_adapter)
    started = lora_weights(model)
    assert started.keys() == champion.keys()
    assert all(torch.equal(started[key], champion[key]) for key in champion)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == len(champion)
    # Dropout shapes training, not the weights: the configured one applies.
    assert model.peft_config["default"].lora_dropout == 0.1

    fresh = lora_weights(_lora_model(base_model(tiny_model), settings, None))
    assert fresh.keys() == champion.keys()
    assert not any(torch.equal(fresh[key], champion[key]) for key in champion)


@pytest.mark.parametrize(
    ("change", "configured", "adapter"),
    [
        ({"r": 8}, "r=8, alpha=8, target_modules 'all-linear'", "r=4, alpha=8, adapts 14 modules"),
        ({"alpha": 16}, "r=4, alpha=16", "r=4, alpha=8"),
        (
            {"target_modules": ["q_proj", "v_proj"]},
            "r=4, alpha=8, target_modules ['q_proj', 'v_proj']: adapts 4 modules (q_proj, v_proj)",
            "r=4, alpha=8, adapts 14 modules (down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)",
        ),
    ],
    ids=["rank", "alpha", "modules"],
)
def test_a_champion_adapter_of_another_shape_is_an_input_error_naming_both(
    tiny_model: str, champion_adapter: Path, change: dict, configured: str, adapter: str
) -> None:
    from flywheel.jobs import JobInputError
    from flywheel.train.trainer import AdapterMismatchError, FetchedAdapter, _lora_model

    with pytest.raises(AdapterMismatchError) as error:
        _lora_model(
            base_model(tiny_model),
            CHAMPION_LORA.model_copy(update=change),
            FetchedAdapter(str(champion_adapter), champion_adapter),
        )

    assert isinstance(error.value, JobInputError)
    message = str(error.value)
    assert f"--init-adapter {champion_adapter} ({adapter}" in message
    assert f"does not match the configured lora settings ({configured}" in message
    assert message.endswith("configure the champion's lora settings, or init_from: base")


def test_flywheel_train_warm_starts_and_records_the_parent_version(
    tiny_model: str, champion_adapter: Path, chat_dataset: str, tmp_path: Path
) -> None:
    import torch

    output = tmp_path / "out"
    # One step at a vanishing warm-start learning rate (a fresh start's would wreck the weights): the
    # published adapter is the champion's, barely moved.
    settings = {
        "max_steps": 1,
        "batch_size": 4,
        "learning_rate": 0.5,
        "warm_start_learning_rate": 1e-9,
        "max_seq_length": 128,
        "init_from": "champion",
        "lora": CHAMPION_LORA.model_dump(),
    }
    code = main(
        [
            "train",
            "--dataset",
            chat_dataset,
            "--base-model",
            tiny_model,
            "--training-config",
            json.dumps(settings),
            "--output",
            str(output),
            "--init-adapter",
            str(champion_adapter),
            "--parent-version",
            "3",
        ]
    )

    assert code == 0
    result = json.loads((output / "result.json").read_text())
    assert (result["init_adapter"], result["parent_version"]) == (str(champion_adapter), 3)
    champion, trained = saved_weights(champion_adapter), saved_weights(output / "adapter")
    assert trained.keys() == champion.keys()
    assert all(torch.allclose(trained[key], champion[key], atol=1e-6) for key in champion)
    # Far from a fresh LoRA, whose B matrices start at zero.
    assert all(float(trained[key].abs().max()) > 1e-2 for key in trained if "lora_B" in key)


def test_a_parent_version_without_an_adapter_is_a_config_error(chat_dataset: str, tmp_path: Path) -> None:
    output = tmp_path / "out"

    arguments = ["--dataset", chat_dataset, "--base-model", "x", "--output", str(output)]

    code = main(["train", *arguments, "--parent-version", "3"])

    assert code == EXIT_CONFIG
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "ConfigError"
    assert "--parent-version names the champion of an --init-adapter; none given" in error["message"]


def optimizer_state(adapter: Path) -> dict:
    import torch

    return torch.load(adapter / "optimizer.pt", weights_only=True)


@pytest.mark.parametrize(("warm_start_optimizer", "steps_after"), [("resume", 3), ("fresh", 1)])
def test_a_warm_start_resumes_the_champions_optimizer_moments_unless_told_to_start_fresh(
    tiny_model: str, chat_dataset: str, tmp_path: Path, warm_start_optimizer: str, steps_after: int
) -> None:
    import torch

    from flywheel.config import TrainingConfig
    from flywheel.train.trainer import train

    settings = {"batch_size": 4, "max_seq_length": 128, "lora": CHAMPION_LORA.model_dump()}
    champion = train(
        chat_dataset, tiny_model, TrainingConfig(max_steps=2, **settings), str(tmp_path / "champion")
    )
    adapter = tmp_path / "champion" / "adapter"
    saved = optimizer_state(adapter)
    assert not champion.optimizer_resumed
    assert {int(s["step"]) for s in saved["state"].values()} == {2}

    warm = TrainingConfig(
        max_steps=1, warm_start_learning_rate=1e-4, warm_start_optimizer=warm_start_optimizer, **settings
    )
    result = train(chat_dataset, tiny_model, warm, str(tmp_path / "warm"), init_adapter=str(adapter))

    assert result.optimizer_resumed is (warm_start_optimizer == "resume")
    after = optimizer_state(tmp_path / "warm" / "adapter")
    assert {int(s["step"]) for s in after["state"].values()} == {steps_after}
    # The new run's own settings, not the champion's: its learning rate (before the schedule's decay).
    assert {group["initial_lr"] for group in after["param_groups"]} == {1e-4}
    if warm_start_optimizer == "resume":
        # The second moments carry the champion's history: beta2 ** 1 of them is still there.
        for index, state in saved["state"].items():
            assert torch.all(after["state"][index]["exp_avg_sq"] >= 0.999 * state["exp_avg_sq"] - 1e-12)


def test_an_adapter_saved_without_optimizer_state_warm_starts_with_fresh_moments(
    tiny_model: str, champion_adapter: Path, chat_dataset: str, tmp_path: Path
) -> None:
    from flywheel.config import TrainingConfig
    from flywheel.train.trainer import train

    assert not (champion_adapter / "optimizer.pt").exists()
    config = TrainingConfig(max_steps=1, batch_size=4, max_seq_length=128, lora=CHAMPION_LORA)

    adapter = str(champion_adapter)
    result = train(chat_dataset, tiny_model, config, str(tmp_path / "warm"), init_adapter=adapter)

    assert not result.optimizer_resumed
    after = optimizer_state(tmp_path / "warm" / "adapter")
    assert {int(s["step"]) for s in after["state"].values()} == {1}


def test_optimizer_moments_laid_out_for_other_parameter_groups_are_not_resumed(
    tiny_model: str, chat_dataset: str, tmp_path: Path
) -> None:
    from flywheel.config import TrainingConfig
    from flywheel.train.trainer import train

    loraplus = CHAMPION_LORA.model_copy(update={"loraplus_lr_ratio": 16.0})
    settings = {"max_steps": 1, "batch_size": 4, "max_seq_length": 128}
    train(chat_dataset, tiny_model, TrainingConfig(lora=loraplus, **settings), str(tmp_path / "champion"))

    warm = TrainingConfig(lora=CHAMPION_LORA, **settings)
    adapter = str(tmp_path / "champion" / "adapter")
    result = train(chat_dataset, tiny_model, warm, str(tmp_path / "warm"), init_adapter=adapter)

    # LoRA+ orders the adapter's weights by matrix (all A, then all B): index by index they no longer fit.
    assert not result.optimizer_resumed
    assert {int(s["step"]) for s in optimizer_state(tmp_path / "warm" / "adapter")["state"].values()} == {1}


def test_a_warm_start_from_an_object_store_fetches_the_champions_adapter_once(
    tiny_model: str, chat_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.config import TrainingConfig
    from flywheel.train import models
    from flywheel.train.trainer import train

    settings = {"max_steps": 1, "batch_size": 4, "max_seq_length": 128, "lora": CHAMPION_LORA.model_dump()}
    # fsspec's in-memory filesystem stands for the object store the registry's adapters live in.
    champion_uri = f"memory://{tmp_path.name}/champion"
    train(chat_dataset, tiny_model, TrainingConfig(**settings), champion_uri)
    fetched: list[str] = []
    real_fetch = models.fetch_adapter

    def counting_fetch(reference: str, **kwargs: object):
        fetched.append(reference)
        return real_fetch(reference, **kwargs)

    monkeypatch.setattr(models, "fetch_adapter", counting_fetch)

    adapter = f"{champion_uri}/adapter"
    result = train(
        chat_dataset, tiny_model, TrainingConfig(**settings), str(tmp_path / "warm"), init_adapter=adapter
    )

    # Weights and optimizer moments come from one copy of the adapter.
    assert fetched == [adapter]
    assert result.optimizer_resumed
    assert {int(s["step"]) for s in optimizer_state(tmp_path / "warm" / "adapter")["state"].values()} == {2}
