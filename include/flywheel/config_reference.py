"""The configuration reference, generated from the pydantic models of :mod:`flywheel.config`.

``flywheel config reference`` renders every key of the configuration file (its type and bounds, its
default and its description) into ``docs/configuration-reference.md``; a test regenerates it and fails
when the models and the page drift apart. Nothing here knows a key by name: it walks the models, so a
field added to a model (with ``Field(description=...)``) appears on the next run. A block whose
``type`` picks its model from a registry (:func:`flywheel.config.by_type`: log sources, deploy hooks,
alert channels) is documented once per built-in implementation.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from flywheel.config import PROJECT_ROOT, FlywheelConfig

REFERENCE_PATH = PROJECT_ROOT / "docs" / "configuration-reference.md"
"""Where the generated reference lives in the repository."""

COMMAND = "flywheel config reference --output docs/configuration-reference.md"

HEADER = f"""\
<!-- Generated from include/flywheel/config.py by `{COMMAND}`; do not edit by hand. -->
# Configuration reference

Every key of the configuration file, generated from the models in `include/flywheel/config.py` (and,
for blocks chosen by `type`, the models of the built-in implementations). How the file is found, its
environment references, its error messages and the keys that need more than a line are explained in
[configuration.md](configuration.md). "required" means the key has no default; a `[]` in a path is
any item of a list, `<name>` any key of a mapping. Regenerate this page with `{COMMAND}`.
"""

_SCALARS = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    date: "date (YYYY-MM-DD)",
    datetime: "date-time (ISO 8601)",
    type(None): "null",
}

# Constraint attributes of annotated_types / pydantic metadata, in the order they are shown.
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


@dataclass(frozen=True)
class Block:
    """One documented block: the model of the mapping found at ``path`` (``""`` is the top level)."""

    path: str
    model: type[BaseModel]
    note: str = ""


def render_reference(root: type[BaseModel] = FlywheelConfig) -> str:
    """The reference page of a configuration file whose top level is ``root``, as Markdown."""
    seen: dict[type[BaseModel], str] = {}
    blocks = list(_blocks(Block("", root), seen))  # all first: a field may point at a later section
    sections = [_section(block, seen) for block in blocks]
    return HEADER + "\n" + "\n".join(sections)


def _blocks(block: Block, seen: dict[type[BaseModel], str]) -> Iterator[Block]:
    """``block`` then every block nested in it, depth first in field order; each model only once."""
    seen[block.model] = block.path
    yield block
    for name, field in block.model.model_fields.items():
        path = f"{block.path}.{name}" if block.path else name
        for nested in _nested_blocks(path, field.annotation, list(field.metadata)):
            if nested.model not in seen:
                yield from _blocks(nested, seen)


def _nested_blocks(path: str, annotation: Any, metadata: list[Any]) -> Iterator[Block]:
    """The blocks a field of this annotation holds (its model, list items, mapping values, unions)."""
    registry = _registry(metadata)
    if registry is not None:
        for name in registry.builtin_names:
            yield Block(path, registry.resolve(name), note=f"`type: {name}`")
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _nested_blocks(path, args[0], [*metadata, *args[1:]])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _nested_blocks(path, arg, [])
    elif origin in (list, set, tuple, frozenset):
        for arg in args:
            if arg is not Ellipsis:
                yield from _nested_blocks(f"{path}[]", arg, [])
    elif origin is dict and args:
        yield from _nested_blocks(f"{path}.<name>", args[1], [])
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield Block(path, annotation)


def _registry(metadata: list[Any]) -> Any:
    """The :class:`~flywheel.plugins.Registry` named by a :func:`~flywheel.config.by_type` validator."""
    from flywheel.plugins import import_object

    for item in metadata:
        path = getattr(getattr(item, "func", None), "registry", None)
        if isinstance(path, str):
            return import_object(path)
    return None


def _section(block: Block, seen: dict[type[BaseModel], str]) -> str:
    title = f"`{block.path}`" if block.path else "Top level"
    if block.note:
        title += f", {block.note}"
    lines = [f"## {title}", ""]
    about = _docstring(block.model)
    if about:
        lines += [about, ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in block.model.model_fields.items():
        path = f"{block.path}.{name}" if block.path else name
        cells = [f"`{name}`", _field_type(path, field, seen), _default(field), _description(name, field)]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _description(name: str, field: FieldInfo) -> str:
    """The field's description; for a nested block without one, the first sentence of its model's."""
    if field.description:
        return _text(field.description)
    if name == "type" and typing.get_origin(field.annotation) is typing.Literal:
        return "Picks this implementation."
    models = _models(field.annotation)
    if len(models) == 1:
        return _docstring(models.pop()).split(". ")[0].removesuffix(".") + "."
    return ""


def _field_type(path: str, field: FieldInfo, seen: dict[type[BaseModel], str]) -> str:
    """The field's type in words, with its bounds; a nested block names where it is documented."""
    described = describe_type(field.annotation, list(field.metadata))
    registry = _registry(list(field.metadata)) or _registry(_inner_metadata(field.annotation))
    if registry is not None:
        builtins = ", ".join(f"`{name}`" for name in registry.builtin_names)
        return f"{described} whose `type` is one of {builtins}, or the dotted path of your own"
    where = sorted({seen[m] for m in _models(field.annotation) if seen.get(m) not in (None, path)})
    if where:
        described += " (see " + ", ".join(f"`{p}`" for p in where) + ")"
    return described


def _inner_metadata(annotation: Any) -> list[Any]:
    """Metadata of the ``Annotated`` items inside a container annotation (``list[Annotated[...]]``)."""
    found = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            found += list(typing.get_args(arg)[1:])
        found += _inner_metadata(arg)
    return found


def _models(annotation: Any) -> set[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return set().union(*(_models(arg) for arg in typing.get_args(annotation)))


def describe_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """An annotation in words: ``integer (>= 0, <= 10)``, ``list of string, or null``, ``one of `a`, `b```."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe_type(args[0], [*(metadata or []), *args[1:]])
    if origin in (typing.Union, types.UnionType):
        # A field's bounds constrain the value when it is not null (pydantic applies them so).
        values = [arg for arg in args if arg is not type(None)]
        if len(values) == 1:
            text = describe_type(values[0], metadata)
        else:
            text = ", or ".join(describe_type(arg) for arg in values)
            bounds = _bounds(metadata or [])
            text += f" ({', '.join(bounds)})" if bounds else ""
        return f"{text}, or null" if type(None) in args else text
    if origin is typing.Literal:
        values = ", ".join(f"`{value if isinstance(value, str) else _json(value)}`" for value in args)
        text = f"one of {values}" if len(args) > 1 else values
    elif origin in (list, set, tuple, frozenset):
        items = [arg for arg in args if arg is not Ellipsis]
        text = "list of " + (", ".join(describe_type(arg) for arg in items) if items else "any")
    elif origin is dict or annotation is dict:
        value = args[1] if args else Any
        text = "mapping" if value is Any else f"mapping of {describe_type(args[0])} to {describe_type(value)}"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = "mapping"
    elif annotation is Any:
        text = "any"
    else:
        text = _SCALARS.get(annotation) or getattr(annotation, "__name__", str(annotation))
    bounds = _bounds(metadata or [])
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _bounds(metadata: list[Any]) -> list[str]:
    """The constraints of a field's metadata: ``>= 1``, ``length >= 1``, ``matching `^a$```."""
    found: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):  # an inner Annotated[..., Field(...)]
            found += _bounds(list(item.metadata))
            continue
        for attribute, symbol in _BOUNDS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{symbol} {_json(value)}")
        if getattr(item, "min_length", None) is not None:
            found.append(f"length >= {item.min_length}")
        if getattr(item, "max_length", None) is not None:
            found.append(f"length <= {item.max_length}")
        if getattr(item, "pattern", None) is not None:
            found.append(f"matching `{item.pattern}`")
    return found


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel) and _is_default_instance(value):
        return "every default"
    return f"`{_json(value)}`"


def _is_default_instance(value: BaseModel) -> bool:
    try:
        return value == type(value)()
    except Exception:  # a model with required fields has no default instance
        return False


def _json(value: Any) -> str:
    text = json.dumps(to_jsonable_python(value), ensure_ascii=False)
    # Defaults computed from the checkout's location (e.g. the pod template folder) differ per machine.
    return text.replace(json.dumps(str(PROJECT_ROOT))[1:-1], "<project root>")


def _docstring(model: type[BaseModel]) -> str:
    """The first paragraph of the model's docstring, with reST roles turned into Markdown code."""
    if not model.__doc__:  # not inherited: a model without its own docstring says nothing
        return ""
    return _text(inspect.cleandoc(model.__doc__).split("\n\n")[0])


def _text(text: str | None) -> str:
    """Docstring or description text as one Markdown line: reST roles and literals become code spans;
    outside code, ``<tag>``-like words are quoted (Markdown would take them for HTML) and ``*`` escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text or "").replace("``", "`")
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = re.sub(r"</?[A-Za-z_][^<>\s]*>", lambda m: f"`{m.group(0)}`", parts[i]).replace("*", "\\*")
    return " ".join("`".join(parts).split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
