"""Few-shot (in-context) examples for the ``icl`` evaluation type: which training examples to show, and where.

:class:`ShotSelector` picks, for each evaluation example, up to ``max_shots`` examples of the training
split (the *pool*; never an evaluation example) whose shot cost fits ``token_budget``, and
:func:`with_shots` inserts them into the prompt as earlier conversation turns.

**Shot cost** (:func:`shot_cost`): a shot's messages after its system message, converted with
``to_template_messages(messages, tools=[], native=False)`` (tool calls as ``<tool_call>`` text, tool
results as ``<tool_response>`` user turns), counted as the sum over those messages of the tokens of their
``content`` (the model's own tokenizer, no special tokens added). The chat template's per-turn markers
(about five tokens a turn for ChatML) are not counted. A pool example whose cost alone exceeds
``token_budget`` is never chosen.

**Selection rule** (greedy, one shot at a time, while fewer than ``max_shots`` are chosen and some
candidate fits the budget left). Candidates are the pool examples that fit (the first ``pool_size`` of
the pool, minus any with the evaluation example's own id). Each step takes the candidate with the
smallest key ``(tier, novelty, -similarity, tie_hash)``:

- ``tier`` 0: the answer calls only tools the example offers (a plain answer, calling none, is tier 0
  too); tier 1: it calls a tool the example does not offer. So a shot calling a foreign tool is used only
  when no tier-0 candidate fits the budget left (it still demonstrates the call format, e.g. for
  datasets where every example has its own tools).
- ``novelty`` 0 when the shot demonstrates something not demonstrated by the shots chosen so far: a tool
  not yet called, or, for a plain answer, the first plain answer. A plain answer thus counts as one more
  "tool" to cover: it is included when the pool has one, a slot is left, no un-demonstrated offered tool
  is a better match, and the budget allows; it is not forced in.
- ``similarity``: BM25 (k1 1.5, b 0.75) of the example's user text (its user messages joined) against
  each pool example's user text, over lowercased word tokens (``\\w+``); or, with ``similarity:
  embedding``, the cosine of mean-pooled, L2-normalised last hidden states of ``embedding_model``.
  Rounded (BM25 to 9 decimals, cosine to 6) so that equal texts tie exactly despite float noise.
- ``tie_hash``: SHA-256 of ``"{seed}:{example_id}"`` of the pool example: among equals the choice
  differs between seeds and is the same for a given seed.

The chosen shots are ordered by similarity, the most similar last (closest to the question); among
equal similarity the earlier pick goes later.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from flywheel.config import IclConfig
from flywheel.evaluate.examples import EvalExample, TrainExample
from flywheel.train.formatting import to_template_messages

NO_TOOL = "<no_tool>"
"""What a plain answer (no tool call) demonstrates, for coverage."""

BM25_K1 = 1.5
BM25_B = 0.75
EMBEDDING_BATCH_SIZE = 32
EMBEDDING_MAX_LENGTH = 512

_WORD = re.compile(r"\w+")


def shot_messages(shot: TrainExample) -> list[dict[str, Any]]:
    """The messages a shot contributes to a prompt: its conversation after its system message."""
    messages = shot.messages
    if messages and messages[0].get("role") == "system":
        messages = messages[1:]
    return messages


def shot_cost(tokenizer: Any, shot: TrainExample) -> int:
    """Tokens a shot takes in a prompt, by the measure of the module docstring (contents only)."""
    converted = to_template_messages(shot_messages(shot), [], native=False)
    return sum(
        len(tokenizer(message["content"], add_special_tokens=False)["input_ids"])
        for message in converted
        if message["content"]
    )


def user_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text of a conversation's user messages, joined by newlines (what similarity compares)."""
    parts = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content:
            parts.append(str(content))
    return "\n".join(parts)


def offered_tools(tools: Sequence[dict[str, Any]]) -> set[str]:
    """Names of the tools of an OpenAI ``tools`` list."""
    names = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if function.get("name"):
            names.add(function["name"])
    return names


def with_shots(example_messages: list[dict[str, Any]], shots: Sequence[TrainExample]) -> list[dict[str, Any]]:
    """The prompt with the shots as earlier turns, right after the system message (copies; inputs untouched).

    System message first (so the system + tools prefix stays the same across examples and its KV cache
    can be reused), then each shot's messages after its system message verbatim (user, assistant with
    ``tool_calls`` or ``content``, tool turns), then the example's own non-system messages. Without a
    system message the shots come first.
    """
    head = [m for m in example_messages[:1] if m.get("role") == "system"]
    rest = example_messages[len(head) :]
    out = [copy.deepcopy(m) for m in head]
    for shot in shots:
        out.extend(copy.deepcopy(m) for m in shot_messages(shot))
    out.extend(copy.deepcopy(m) for m in rest)
    return out


class ShotSelector:
    """Chooses the few-shot examples of each evaluation example from a training pool.

    Precomputes once: each pool example's shot cost (with ``tokenizer``, the evaluated model's), the
    tools its answer calls, its tie-break hash, and the BM25 statistics of its user text, or its
    embedding in ``embedding`` mode (``device`` is where the embedding model runs). See the module
    docstring for the rule.
    """

    def __init__(
        self, pool: list[TrainExample], tokenizer: Any, config: IclConfig, *, device: str = "cpu"
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.pool = list(pool[: config.pool_size])
        self._costs = {shot.example_id: shot_cost(tokenizer, shot) for shot in self.pool}
        self._kinds = [set(shot.tool_names) or {NO_TOOL} for shot in self.pool]
        self._calls = [set(shot.tool_names) for shot in self.pool]
        self._hashes = [_tie_hash(config.seed, shot.example_id) for shot in self.pool]
        self._eligible = [
            i for i, shot in enumerate(self.pool) if self._costs[shot.example_id] <= config.token_budget
        ]
        texts = [user_text(shot_messages(shot)) for shot in self.pool]
        self._embedder: _Embedder | None = None
        if config.similarity == "embedding":
            if not config.embedding_model:
                raise ValueError("similarity 'embedding' needs icl.embedding_model")
            self._embedder = _Embedder(config.embedding_model, device=device)
            self._pool_vectors = self._embedder.embed(texts)
        else:
            self._bm25 = _Bm25([_words(text) for text in texts])

    def select(self, example: EvalExample) -> list[TrainExample]:
        """Up to ``max_shots`` pool examples for ``example``, most similar last (the module's rule)."""
        budget = self.config.token_budget
        offered = offered_tools(example.tools)
        similarity = self.similarities(user_text(example.messages))
        ranked = sorted(
            (0 if self._calls[i] <= offered else 1, -similarity[i], self._hashes[i], i)
            for i in self._eligible
            if self.pool[i].example_id != example.example_id
        )
        chosen: list[int] = []
        shown: set[str] = set()
        taken: set[int] = set()
        while len(chosen) < self.config.max_shots:
            pick = _first_fit(ranked, taken, shown, self._kinds, self._cost_of, budget)
            if pick is None:
                break
            chosen.append(pick)
            taken.add(pick)
            shown |= self._kinds[pick]
            budget -= self._cost_of(pick)
        order = sorted(range(len(chosen)), key=lambda k: (similarity[chosen[k]], -k))
        return [self.pool[chosen[k]] for k in order]

    def similarities(self, text: str) -> list[float]:
        """Similarity of ``text`` to each pool example's user text: BM25 (9 decimals) or cosine (6)."""
        if self._embedder is not None:
            query = self._embedder.embed([text])[0]
            scores = (self._pool_vectors @ query).tolist() if len(self.pool) else []
            return [round(float(score), 6) for score in scores]
        return [round(score, 9) for score in self._bm25.scores(_words(text))]

    def shot_tokens(self, shots: Sequence[TrainExample]) -> int:
        """Total shot cost of ``shots`` (what the runner reports as ICL tokens of an example)."""
        return sum(
            self._costs[shot.example_id]
            if shot.example_id in self._costs
            else shot_cost(self.tokenizer, shot)
            for shot in shots
        )

    def _cost_of(self, index: int) -> int:
        return self._costs[self.pool[index].example_id]


def _first_fit(
    ranked: list[tuple[int, float, int, int]],
    taken: set[int],
    shown: set[str],
    kinds: list[set[str]],
    cost_of: Callable[[int], int],
    budget: int,
) -> int | None:
    """The smallest ``(tier, novelty, -similarity, hash)`` candidate that fits ``budget``, or None."""
    fallback: tuple[int, int] | None = None  # (tier, index) of the best fitting non-novel candidate
    for tier, _, _, index in ranked:
        if fallback is not None and tier > fallback[0]:
            return fallback[1]
        if index in taken or cost_of(index) > budget:
            continue
        if kinds[index] - shown:
            return index
        if fallback is None:
            fallback = (tier, index)
    return fallback[1] if fallback is not None else None


def _tie_hash(seed: int, example_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:8], "big")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _Bm25:
    """Okapi BM25 over a fixed set of documents (word lists), with an inverted index."""

    def __init__(self, documents: list[list[str]]) -> None:
        self.size = len(documents)
        self.lengths = [len(words) for words in documents]
        average = sum(self.lengths) / self.size if self.size else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index, words in enumerate(documents):
            for word, count in Counter(words).items():
                self.postings[word].append((index, count))
        self.idf = {
            word: math.log(1 + (self.size - len(hits) + 0.5) / (len(hits) + 0.5))
            for word, hits in self.postings.items()
        }
        self.norms = [
            BM25_K1 * (1 - BM25_B + BM25_B * (n / average if average else 0.0)) for n in self.lengths
        ]

    def scores(self, query: list[str]) -> list[float]:
        scores = [0.0] * self.size
        for word in sorted(set(query)):  # a fixed order: the same sums in every process
            idf = self.idf.get(word)
            if idf is None:
                continue
            for index, count in self.postings[word]:
                scores[index] += idf * count * (BM25_K1 + 1) / (count + self.norms[index])
        return scores


class _Embedder:
    """Text embeddings from a local model: last hidden state mean-pooled over the mask, L2-normalised."""

    def __init__(self, model_dir: str, *, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(model_dir).to(device).eval()

    def embed(self, texts: list[str]) -> Any:
        """A ``(len(texts), hidden)`` float tensor of unit vectors (a zero row for an empty text)."""
        import torch

        hidden = self.model.config.hidden_size
        out = torch.zeros(len(texts), hidden, dtype=torch.float32)
        todo = [i for i, text in enumerate(texts) if text.strip()]
        with torch.inference_mode():
            for start in range(0, len(todo), EMBEDDING_BATCH_SIZE):
                batch = todo[start : start + EMBEDDING_BATCH_SIZE]
                encoded = self.tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=EMBEDDING_MAX_LENGTH,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**encoded).last_hidden_state.float()
                mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                out[batch] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out
