"""Per-example tool-call scoring for the evaluation stage.

:func:`score_tool_calls` compares a model's OpenAI-style tool calls with a reference and returns three
boolean metrics:

* ``function_name`` -- the multiset of called function names equals the reference's;
* ``exact`` -- names and arguments are literally equal (order-free over parallel calls);
* ``ast`` -- the Berkeley Function Calling Leaderboard (BFCL) AST checker rules: required parameters
  present, no unexpected parameters, types checked against the schema, strings compared after BFCL's
  standardisation, several acceptable values per parameter, nested values checked recursively. As in
  BFCL, a float is not an ``integer`` even with a zero fraction (``10.0`` for an integer parameter
  fails), while an int is accepted for a ``number`` (``float``) parameter.

The reference is either OpenAI ``tool_calls`` or BFCL's possible-answer form
``[{name: {param: [acceptable values]}}]`` (``""`` among the acceptable values marks an omittable
parameter); the form is detected automatically. Schemas may use BFCL's dialect (``dict``, ``float``,
``tuple``, ``any``), which is normalised to JSON-schema types.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["BFCL_CITATION", "bfcl_tools", "normalize_schema", "score_tool_calls", "standardize_string"]

BFCL_CITATION = """\
@misc{berkeley-function-calling-leaderboard,
  title={Berkeley Function Calling Leaderboard},
  author={Fanjia Yan and Huanzhi Mao and Charlie Cheng-Jie Ji and Tianjun Zhang and Shishir G. Patil
          and Ion Stoica and Joseph E. Gonzalez},
  howpublished={\\url{https://gorilla.cs.berkeley.edu/blogs/8_berkeley_function_calling_leaderboard.html}},
  year={2024},
}
"""
"""BibTeX of the Berkeley Function Calling Leaderboard, whose AST checker rules this module follows."""

_MISSING = object()
_TYPE_ALIASES = {"dict": "object", "float": "number", "tuple": "array", "any": None}
_STANDARDIZE_RE = re.compile(r"[ \,\.\/\-\_\*\^]")

# A parsed call: (function name, arguments object).
Call = tuple[str, dict[str, Any]]
# A reference call in acceptable-values form: (function name, {param: [acceptable values]}).
AcceptableCall = tuple[str, dict[str, list[Any]]]


def standardize_string(value: str) -> str:
    """Normalise a string the way BFCL's ``standardize_string`` does before comparing strings."""
    return _STANDARDIZE_RE.sub("", value).lower().replace("'", '"')


def normalize_schema(schema: Any) -> Any:
    """Return a copy of a JSON schema with BFCL's type dialect mapped to JSON-schema types.

    ``dict`` becomes ``object``, ``float`` becomes ``number``, ``tuple`` becomes ``array`` and ``any``
    drops the ``type`` key (anything is accepted). Nested schemas are normalised recursively.
    """
    if isinstance(schema, list):
        return [normalize_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            mapped = _TYPE_ALIASES.get(value, value)
            if mapped is not None:
                out[key] = mapped
        elif key == "type" and isinstance(value, list):
            out[key] = [_TYPE_ALIASES.get(t, t) for t in value if _TYPE_ALIASES.get(t, t) is not None]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: normalize_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = normalize_schema(value)
        else:
            out[key] = value
    return out


def bfcl_tools(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Wrap BFCL function definitions (``{name, description, parameters}``) as an OpenAI ``tools`` list.

    Names (including dotted ones such as ``math.factorial``) are kept as they are; the parameter schema
    is normalised from BFCL's dialect with :func:`normalize_schema`.
    """
    tools = []
    for fn in functions:
        function: dict[str, Any] = {"name": fn["name"]}
        if "description" in fn:
            function["description"] = fn["description"]
        function["parameters"] = normalize_schema(fn.get("parameters", {"type": "object", "properties": {}}))
        tools.append({"type": "function", "function": function})
    return tools


# --------------------------------------------------------------------------------------------- parsing


def _parse_openai_calls(calls: Any) -> list[Call] | None:
    """Parse OpenAI tool calls into ``(name, arguments)`` pairs; ``None`` when any call is malformed."""
    if not isinstance(calls, list):
        return None
    parsed: list[Call] = []
    for call in calls:
        if not isinstance(call, Mapping):
            return None
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return None
        arguments = function.get("arguments", {})
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return None
        if not isinstance(arguments, dict):
            return None
        parsed.append((function["name"], arguments))
    return parsed


def _is_openai_form(reference: Sequence[Any]) -> bool:
    """Tell whether a reference is OpenAI ``tool_calls`` (as opposed to BFCL's possible-answer form)."""
    return any(isinstance(item, Mapping) and isinstance(item.get("function"), Mapping) for item in reference)


def _parse_bfcl_reference(reference: Sequence[Any]) -> list[AcceptableCall] | None:
    """Parse BFCL possible answers ``[{name: {param: [values]}}]``; ``None`` when malformed."""
    parsed: list[AcceptableCall] = []
    for item in reference:
        if not isinstance(item, Mapping) or len(item) != 1:
            return None
        ((name, params),) = item.items()
        if not isinstance(params, Mapping) or not all(isinstance(v, list) for v in params.values()):
            return None
        parsed.append((str(name), dict(params)))
    return parsed


def _tool_schemas(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Map function name to its normalised parameter schema, from an OpenAI ``tools`` list."""
    schemas: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function", tool)
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            params = normalize_schema(function.get("parameters") or {})
            schemas[function["name"]] = params if isinstance(params, dict) else {}
    return schemas


def _to_acceptable(value: Any) -> Any:
    """Turn a literal reference value into BFCL candidate form (dict values become one-item lists)."""
    if isinstance(value, dict):
        return {key: [_to_acceptable(sub)] for key, sub in value.items()}
    if isinstance(value, list):
        return [_to_acceptable(sub) for sub in value]
    return value


def _openai_reference_as_acceptable(
    calls: list[Call], schemas: Mapping[str, dict[str, Any]]
) -> list[AcceptableCall]:
    """Express OpenAI reference calls as acceptable-value calls.

    Each given argument becomes the single acceptable value; an optional parameter whose reference value
    equals the schema default may also be omitted, and an omitted parameter with a schema default may be
    given as that default.
    """
    out: list[AcceptableCall] = []
    for name, arguments in calls:
        schema = schemas.get(name, {})
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        params: dict[str, list[Any]] = {}
        for key, value in arguments.items():
            acceptable = [_to_acceptable(value)]
            default = (
                properties.get(key, {}).get("default", _MISSING) if isinstance(properties, dict) else _MISSING
            )
            if key not in required and default is not _MISSING and _literal_equal(value, default):
                acceptable.append("")
            params[key] = acceptable
        if isinstance(properties, dict):
            for key, prop in properties.items():
                if key not in arguments and isinstance(prop, dict) and "default" in prop:
                    params[key] = [_to_acceptable(prop["default"]), ""]
        out.append((name, params))
    return out


# ------------------------------------------------------------------------------------------ comparison


def _literal_equal(a: Any, b: Any) -> bool:
    """Deep equality where numbers compare by value but booleans only equal booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_literal_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_literal_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _same_typed_literal(value: Any, candidate: Any) -> bool:
    """BFCL's "variable" rule for a value of a type the schema does not declare: it passes only when it
    has the very type of the possible answer and equals it, so ``10.0`` never stands for the int ``10``."""
    return type(value) is type(candidate) and _literal_equal(value, candidate)


def _type_ok(value: Any, schema: Mapping[str, Any]) -> bool:
    """Check a value against the (normalised) schema's ``type``; an int is accepted for a number."""
    expected = schema.get("type")
    if expected is None:
        return True
    kinds = expected if isinstance(expected, list) else [expected]
    for kind in kinds:
        if (
            (kind == "string" and isinstance(value, str))
            or (kind == "boolean" and isinstance(value, bool))
            or (kind == "integer" and isinstance(value, int) and not isinstance(value, bool))
            or (kind == "number" and isinstance(value, int | float) and not isinstance(value, bool))
            or (kind == "array" and isinstance(value, list))
            or (kind == "object" and isinstance(value, dict))
            or (kind == "null" and value is None)
        ):
            return True
    return False


class _Matcher:
    """Recursive value matcher; ``lenient`` selects the BFCL AST rules, otherwise literal comparison.

    Both check types against the schema they are given (a float for an ``integer`` fails both), so that
    a call that is ``exact`` is also ``ast``; only the lenient one standardises strings.
    """

    def __init__(self, lenient: bool) -> None:
        """Configure string standardisation (on when ``lenient``)."""
        self.lenient = lenient

    def value_ok(self, value: Any, acceptable: list[Any], schema: Mapping[str, Any]) -> bool:
        """Whether ``value`` (present in the call) matches one of the ``acceptable`` candidates."""
        if not _type_ok(value, schema):
            # BFCL accepts a value of the "wrong" type when it literally is a possible answer, of its type.
            return any(_same_typed_literal(value, candidate) for candidate in acceptable)
        return any(self.match(value, candidate, schema) for candidate in acceptable)

    def match(self, value: Any, candidate: Any, schema: Mapping[str, Any]) -> bool:
        """Whether ``value`` matches one candidate (dict candidates hold per-key acceptable lists)."""
        if not _type_ok(value, schema):
            # BFCL's "variable" rule: a value of the wrong type passes only if it literally is the answer.
            return _same_typed_literal(value, candidate)
        if isinstance(value, str) and isinstance(candidate, str):
            if self.lenient:
                return standardize_string(value) == standardize_string(candidate)
            return value == candidate
        if isinstance(value, list) and isinstance(candidate, list):
            items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
            return len(value) == len(candidate) and all(
                self.match(v, c, items) for v, c in zip(value, candidate, strict=True)
            )
        if isinstance(value, dict) and isinstance(candidate, dict):
            if all(isinstance(c, list) for c in candidate.values()) and self.dict_ok(
                value, candidate, schema
            ):
                return True
            return self.literal_dict(value, candidate, schema)
        return _literal_equal(value, candidate)

    def literal_dict(
        self, value: dict[str, Any], candidate: dict[str, Any], schema: Mapping[str, Any]
    ) -> bool:
        """Compare a dict with a literal dict candidate key-wise, under the matcher's rules."""
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return value.keys() == candidate.keys() and all(
            self.match(value[k], candidate[k], properties.get(k) or {}) for k in value
        )

    def dict_ok(
        self, value: Mapping[str, Any], candidate: Mapping[str, list[Any]], schema: Mapping[str, Any]
    ) -> bool:
        """Check a dict of arguments against per-key acceptable values.

        Every key of ``value`` must be a candidate key whose acceptable values match; every candidate key
        missing from ``value`` must allow omission (``""`` among its acceptable values).
        """
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for key, sub in value.items():
            if key not in candidate or not self.value_ok(sub, candidate[key], properties.get(key) or {}):
                return False
        return all(key in value or "" in acceptable for key, acceptable in candidate.items())


def _call_ast_ok(
    call: Call, reference: AcceptableCall, schemas: Mapping[str, dict[str, Any]], matcher: _Matcher
) -> bool:
    """BFCL AST check of one predicted call against one reference call."""
    name, arguments = call
    ref_name, acceptable = reference
    if name != ref_name:
        return False
    schema = schemas.get(name)
    if schema is not None:
        properties = schema.get("properties") or {}
        if any(param not in arguments for param in schema.get("required") or []):
            return False
        if any(param not in properties for param in arguments):
            return False
    return matcher.dict_ok(arguments, acceptable, schema or {})


def _call_exact_ok(
    call: Call, reference: AcceptableCall, schemas: Mapping[str, dict[str, Any]], matcher: _Matcher
) -> bool:
    """Literal check of one predicted call against one reference call (no standardisation; the schema's
    types still apply, so an exact call is never one the AST check rejects)."""
    name, arguments = call
    ref_name, acceptable = reference
    return name == ref_name and matcher.dict_ok(arguments, acceptable, schemas.get(name) or {})


def _perfect_matching(n: int, ok: Callable[[int, int], bool]) -> bool:
    """Whether an ``n`` x ``n`` compatibility relation admits a perfect matching (augmenting paths)."""
    adjacency = [[j for j in range(n) if ok(i, j)] for i in range(n)]
    owner: list[int | None] = [None] * n

    def augment(i: int, seen: list[bool]) -> bool:
        for j in adjacency[i]:
            if not seen[j]:
                seen[j] = True
                current = owner[j]
                if current is None or augment(current, seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, [False] * n) for i in range(n))


def score_tool_calls(
    predicted_tool_calls: Any, reference: Any, tools: Sequence[Mapping[str, Any]] | None
) -> dict[str, bool]:
    """Score one example's predicted tool calls against a reference.

    Args:
        predicted_tool_calls: OpenAI tool calls, ``[{"type": "function", "function": {"name", "arguments"}}]``
            (``arguments`` as JSON text or a dict; ``type`` may be missing).
        reference: OpenAI ``tool_calls`` of the same shape, or BFCL possible answers
            ``[{name: {param: [acceptable values]}}]``.
        tools: the request's OpenAI ``tools`` list, used for required parameters, types and defaults.

    Returns:
        ``{"function_name": bool, "exact": bool, "ast": bool}``. Malformed predictions (arguments that are
        not a JSON object, for instance) score False everywhere; this function never raises on bad input.
    """
    failed = {"function_name": False, "exact": False, "ast": False}
    try:
        predicted = _parse_openai_calls(predicted_tool_calls)
        if predicted is None or not isinstance(reference, list):
            return failed
        schemas = _tool_schemas(tools)
        if _is_openai_form(reference):
            ref_calls = _parse_openai_calls(reference)
            if ref_calls is None:
                return failed
            acceptable = _openai_reference_as_acceptable(ref_calls, schemas)
        else:
            parsed = _parse_bfcl_reference(reference)
            if parsed is None:
                return failed
            acceptable = parsed
        names_ok = Counter(name for name, _ in predicted) == Counter(name for name, _ in acceptable)
        if not names_ok or len(predicted) != len(acceptable):
            return {"function_name": names_ok, "exact": False, "ast": False}
        literal, lenient = _Matcher(lenient=False), _Matcher(lenient=True)
        n = len(predicted)
        exact = _perfect_matching(
            n, lambda i, j: _call_exact_ok(predicted[i], acceptable[j], schemas, literal)
        )
        ast = _perfect_matching(n, lambda i, j: _call_ast_ok(predicted[i], acceptable[j], schemas, lenient))
        return {"function_name": True, "exact": exact, "ast": ast}
    except Exception:  # scoring must never take down an evaluation run
        return failed
