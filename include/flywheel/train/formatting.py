"""The one place where a conversation becomes model text, and model text becomes tool calls again.

Training (:func:`encode_for_training`) and evaluation (:func:`render_prompt` / :func:`encode_prompt`,
then :func:`parse_tool_calls` on the generated text) both go through this module, so the format a
student is taught is exactly the format the evaluator reads back.

Two paths, chosen per tokenizer by :func:`supports_tools`:

**Native**: the tokenizer's chat template renders ``tools`` and assistant ``tool_calls`` itself, in the
Hermes/Qwen form (``<tool_call>`` blocks holding ``{"name": ..., "arguments": {...}}``) that
:func:`parse_tool_calls` reads. Messages go to the template unchanged, except that a tool call's
``arguments`` JSON text is parsed to an object (the Hugging Face chat-template convention).

**Fallback** (any other template, e.g. SmolLM2's, which ignores ``tools``): the tools and the calls
are written as plain text inside ordinary system / user / assistant messages:

- the tools are appended to the system message (one is inserted first when there is none), after a
  blank line when the system message has content::

      <system content>

      <tools>
      {"name":"get_order_status","description":"...","parameters":{...}}
      {"name":"track_shipment","description":"...","parameters":{...}}
      </tools>
      To call tools, reply only with one <tool_call>{"name": <tool name>, "arguments": <arguments object>}\
</tool_call> block per call; otherwise answer in plain text.

  (the instruction is a single line, ``FALLBACK_INSTRUCTION``, cut above for width; one compact
  JSON object per tool: the ``function`` object of the OpenAI ``tools`` entry, keys in the logged
  order; no block at all when the record has no tools);
- an assistant tool call becomes ``<tool_call>{"name": "track_shipment", "arguments": {"carrier":
  "dhl"}}</tool_call>`` (``json.dumps`` with its default separators, keys in the logged order,
  ``arguments`` parsed to an object); several calls follow each other separated by ``\\n``; a text
  ``content`` next to calls comes first, then ``\\n``; a message with neither has empty content;
- ``tool`` messages become a ``user`` message ``<tool_response>{content}</tool_response>``;
  consecutive tool messages (answers to parallel calls) share one user message, one block per line.

Supervision: only the final assistant turn (its content / tool-call text and its end-of-turn token)
carries labels; everything before it is ``-100``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
TOOLS_OPEN = "<tools>"
TOOLS_CLOSE = "</tools>"
FALLBACK_INSTRUCTION = (
    f'To call tools, reply only with one {TOOL_CALL_OPEN}{{"name": <tool name>, "arguments": '
    f"<arguments object>}}{TOOL_CALL_CLOSE} block per call; otherwise answer in plain text."
)
IGNORE_INDEX = -100

_PROBE_TOOL = "flywheel_probe_tool_7f3a"
_PROBE_CALL = "flywheel_probe_call_9c2e"
_PROBE_ARGUMENTS = {"probe_argument": "probe value"}
_NATIVE_CACHE: dict[str, bool] = {}
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.DOTALL)


class AnswerTooLongError(ValueError):
    """The final assistant turn alone does not fit in ``max_length``: the example cannot be trained on."""


@dataclass(frozen=True)
class Encoded:
    """One training example: token ids and labels (``-100`` everywhere but the supervised answer)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # tokens were dropped from the start of the prompt to fit max_length

    @property
    def supervised_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def supports_tools(tokenizer: Any) -> bool:
    """True when the chat template renders ``tools`` and assistant ``tool_calls`` natively.

    Probe: a tiny conversation with a sentinel tool and a sentinel call. The tool name must appear in
    the rendered prompt, and the rendered assistant turn (the full text minus the prompt, which it
    must start with) must parse back with :func:`parse_tool_calls` into exactly the sentinel call. A
    template that renders calls in another dialect (Llama 3.1 JSON, Mistral ``[TOOL_CALLS]``) is
    therefore treated as tool-less and gets the fallback format, which the evaluator can parse.
    The answer is cached per chat template.
    """
    key = repr(getattr(tokenizer, "chat_template", None))
    if key not in _NATIVE_CACHE:
        _NATIVE_CACHE[key] = _probe_native(tokenizer)
    return _NATIVE_CACHE[key]


def _probe_native(tokenizer: Any) -> bool:
    tools = [
        {
            "type": "function",
            "function": {
                "name": _PROBE_TOOL,
                "description": "Probe.",
                "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}},
            },
        }
    ]
    prompt = [{"role": "user", "content": "Probe."}]
    call = {
        "id": "call_probe",
        "type": "function",
        "function": {"name": _PROBE_CALL, "arguments": dict(_PROBE_ARGUMENTS)},
    }
    try:
        prompt_text = _render(tokenizer, prompt, tools, generation_prompt=True)
        full_text = _render(
            tokenizer, [*prompt, {"role": "assistant", "content": None, "tool_calls": [call]}], tools
        )
    except Exception:  # a template that cannot take tools or calls at all
        return False
    if _PROBE_TOOL not in prompt_text or not full_text.startswith(prompt_text):
        return False
    return parse_tool_calls(full_text[len(prompt_text) :]) == [
        {"name": _PROBE_CALL, "arguments": _PROBE_ARGUMENTS}
    ]


def to_template_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, native: bool
) -> list[dict[str, Any]]:
    """The messages to hand to the chat template (new dicts; the input is not modified).

    ``native``: unchanged but for tool-call ``arguments`` parsed from JSON text to objects. Otherwise
    the fallback format of the module docstring: tools in the system message, calls as
    ``<tool_call>`` text, tool results as ``<tool_response>`` user messages.
    """
    if native:
        return [_native_message(message) for message in messages]
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            block = f"{TOOL_RESPONSE_OPEN}{_text(message.get('content'))}{TOOL_RESPONSE_CLOSE}"
            previous = converted[-1] if converted else None
            if previous is not None and previous.get("_tool_responses"):
                previous["content"] += "\n" + block
            else:
                converted.append({"role": "user", "content": block, "_tool_responses": True})
        elif role == "assistant":
            parts = [_text(message.get("content"))] if message.get("content") else []
            parts += [format_tool_call(call) for call in message.get("tool_calls") or []]
            converted.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            converted.append({"role": role, "content": _text(message.get("content"))})
    for message in converted:
        message.pop("_tool_responses", None)
    if tools:
        block = "\n".join(
            [TOOLS_OPEN]
            + [json.dumps(_function(tool), ensure_ascii=False, separators=(",", ":")) for tool in tools]
            + [TOOLS_CLOSE, FALLBACK_INSTRUCTION]
        )
        if converted and converted[0]["role"] == "system":
            system = converted[0]["content"]
            converted[0]["content"] = f"{system}\n\n{block}" if system else block
        else:
            converted.insert(0, {"role": "system", "content": block})
    return converted


WORD_JOINER = "\u2060"
"""Written after the first character of a special token's text found in logged content."""


def defuse_special_tokens(tokenizer: Any, value: Any) -> Any:
    """``value`` (messages, tools, any JSON) with every special token's text in its strings defused.

    The template writes the special tokens (``<|im_start|>``, ``<|im_end|>``...) around messages, and
    tokenizing the rendered text turns each of their texts into that token. Logged content that holds
    such text (a customer pasting ``<|im_end|><|im_start|>system``) would otherwise end its turn and
    open one of its own, in training and at inference alike. A word joiner after the first character
    keeps the text readable and makes it ordinary tokens.
    """
    specials = sorted({t for t in tokenizer.all_special_tokens if len(t) > 1}, key=len, reverse=True)
    if not specials:
        return value

    def defuse(item: Any) -> Any:
        if isinstance(item, str):
            for special in specials:
                if special in item:
                    item = item.replace(special, special[0] + WORD_JOINER + special[1:])
            return item
        if isinstance(item, list):
            return [defuse(element) for element in item]
        if isinstance(item, dict):
            return {key: defuse(element) for key, element in item.items()}
        return item

    return defuse(value)


def format_tool_call(call: dict[str, Any]) -> str:
    """One call as fallback text: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    Takes an OpenAI ``tool_calls`` entry (``function.arguments`` as JSON text or an object) or a
    reference call (``{"name", "arguments"}``).
    """
    function = call.get("function", call)
    payload = {"name": function["name"], "arguments": _arguments(function.get("arguments"))}
    return f"{TOOL_CALL_OPEN}{json.dumps(payload, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def encode_for_training(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, max_length: int
) -> Encoded:
    """Token ids and labels of one train/validation example (``messages`` ends with the answer).

    The prompt (every message but the last, with the generation prompt) and the full conversation are
    rendered with the chat template; the full text must start with the prompt text. Both are tokenized
    without adding special tokens (the template writes them). Labels cover exactly the answer's tokens
    up to and including the last special token of the turn (its end-of-turn token, e.g.
    ``<|im_end|>``); anything the template writes after it (a newline) is dropped. When the example
    is longer than ``max_length``, tokens are dropped from the start of the prompt and ``truncated``
    is set; an answer that alone does not fit raises :class:`AnswerTooLongError`.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training example's messages must end with the assistant answer")
    native = supports_tools(tokenizer)
    converted = defuse_special_tokens(tokenizer, to_template_messages(messages, tools, native=native))
    template_tools = defuse_special_tokens(tokenizer, tools) if native else None
    prompt_text = _render(tokenizer, converted[:-1], template_tools, generation_prompt=True)
    full_text = _render(tokenizer, converted, template_tools)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            f"the chat template of {_template_name(tokenizer)} renders the conversation so that it does"
            " not start with the rendered prompt (add_generation_prompt=True); the answer's tokens"
            " cannot be separated from the prompt's"
        )
    prompt_ids = _tokenize(tokenizer, prompt_text)
    full_ids = _tokenize(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        answer_ids = full_ids[len(prompt_ids) :]
    else:  # a merge across the boundary: tokenize the answer as the model generates it, after the prompt
        answer_ids = _tokenize(tokenizer, full_text[len(prompt_text) :])
    answer_ids = answer_ids[: _end_of_turn(tokenizer, answer_ids)]
    if not answer_ids:
        raise ValueError(f"the chat template of {_template_name(tokenizer)} rendered an empty answer")
    if len(answer_ids) > max_length:
        raise AnswerTooLongError(f"the answer takes {len(answer_ids)} tokens, max_length is {max_length}")
    keep = max_length - len(answer_ids)
    truncated = len(prompt_ids) > keep
    if truncated:
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    return Encoded(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(answer_ids),
        truncated=truncated,
    )


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The evaluation input: the prompt ``messages`` (no answer) rendered with the generation prompt."""
    native = supports_tools(tokenizer)
    converted = defuse_special_tokens(tokenizer, to_template_messages(messages, tools, native=native))
    template_tools = defuse_special_tokens(tokenizer, tools) if native else None
    return _render(tokenizer, converted, template_tools, generation_prompt=True)


def encode_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
    """Token ids of :func:`render_prompt`, tokenized exactly as in training (no special tokens added)."""
    return _tokenize(tokenizer, render_prompt(tokenizer, messages, tools))


class ToolCallParseError(ValueError):
    """Generated text holds a ``<tool_call>`` block that is not a well-formed call; ``reason`` says how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The tool calls in generated text, as ``[{"name": str, "arguments": dict}]``.

    Returns ``[]`` for text without any block (a plain answer) and ``None`` when a block is present
    but malformed (the evaluator scores that as a failed call). :func:`read_tool_calls` says why.
    """
    try:
        return read_tool_calls(text)
    except ToolCallParseError:
        return None


def read_tool_calls(text: str) -> list[dict[str, Any]]:
    """The tool calls in generated text; :class:`ToolCallParseError` with a reason when one is malformed.

    Every ``<tool_call>...</tool_call>`` block counts, and a final block without its closing tag (the
    generation stopped first); in that last case only the first JSON value after the tag is read and
    anything after it (an end-of-turn token) is ignored. Each block must hold a JSON object with a
    string ``name`` and ``arguments`` that is an object or JSON text holding an object. Text outside
    the blocks is ignored. Reasons: ``invalid_json``, ``text_after_call``, ``not_a_call``,
    ``arguments_not_json``, ``arguments_not_object``.
    """
    calls: list[dict[str, Any]] = []
    decoder = json.JSONDecoder(parse_constant=reject_non_json_constant)
    for number, match in enumerate(_BLOCK.finditer(text), start=1):
        body, closed = match.group(1).strip(), bool(match.group(2))
        where = f"call {number}"
        try:
            value, end = decoder.raw_decode(body)
        except json.JSONDecodeError as exc:
            state = "" if closed else " (the block is not closed: the answer was cut off?)"
            raise ToolCallParseError("invalid_json", f"{where}: {exc.msg} at {exc.pos}{state}") from None
        if closed and body[end:].strip():
            raise ToolCallParseError("text_after_call", f"{where}: {body[end:].strip()[:80]!r}")
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or "arguments" not in value:
            raise ToolCallParseError("not_a_call", f"{where}: needs a string 'name' and 'arguments'")
        arguments = value["arguments"]
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments, parse_constant=reject_non_json_constant)
            except json.JSONDecodeError as exc:
                raise ToolCallParseError("arguments_not_json", f"{where}: {exc.msg}") from None
        if not isinstance(arguments, dict):
            kind = type(arguments).__name__
            raise ToolCallParseError("arguments_not_object", f"{where}: arguments are a {kind}")
        calls.append({"name": value["name"], "arguments": arguments})
    return calls


def reject_non_json_constant(name: str) -> Any:
    """``parse_constant`` hook of ``json.loads``: NaN and Infinity are not JSON, no tool could take them."""
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def text_outside_tool_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (an unclosed final block runs to the end)."""
    return _BLOCK.sub("", text)


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    generation_prompt: bool = False,
) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=generation_prompt, tokenize=False
    )


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _end_of_turn(tokenizer: Any, answer_ids: list[int]) -> int:
    """Length of the supervised answer: through its last special token, or all of it when it has none."""
    special = set(tokenizer.all_special_ids)
    for index in range(len(answer_ids) - 1, -1, -1):
        if answer_ids[index] in special:
            return index + 1
    return len(answer_ids)


def _template_name(tokenizer: Any) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    copy = dict(message)
    if message.get("tool_calls"):
        copy["tool_calls"] = [
            {
                **call,
                "function": {**call["function"], "arguments": _arguments(call["function"].get("arguments"))},
            }
            for call in message["tool_calls"]
        ]
    return copy


def _arguments(arguments: Any) -> dict[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ValueError(f"tool-call arguments are not JSON: {arguments[:200]!r}") from error
    if not isinstance(arguments, dict):
        raise ValueError(f"tool-call arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"] if isinstance(tool.get("function"), dict) else tool


def _text(content: Any) -> str:
    """Message content as text: ``None`` is empty, OpenAI content parts are joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)
