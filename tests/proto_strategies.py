"""Hypothesis strategies for any protobuf message, built from its descriptor.

Values favour edges: empty and huge strings, NaN and infinities, integer
bounds, enum numbers that no enum declares, deep nesting cut off at a depth.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
_INT_BOUNDS = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1),
               F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
               F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_UINT64: (0, 2**64 - 1)}
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "w1", "7", "3,5,7", "\u202e", "../../etc"]),
                 st.integers(0, 3).map(lambda k: "x" * (10 ** (k + 3) + 1)))  # up to 1 MB


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type == F.TYPE_STRING:
        return TEXT
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if field.type == F.TYPE_DOUBLE else 32)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 1000))
    low, high = _INT_BOUNDS[field.type]
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, 2, 3, 5, 16]))


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of this type with any subset of fields set to anything the wire allows."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            strategy = st.dictionaries(_scalar(key), _value(value, depth), max_size=80)
        elif field.is_repeated:
            strategy = st.lists(_value(field, depth), max_size=12)
        else:
            strategy = _value(field, depth)
        parts[field.name] = st.none() | strategy
    return st.fixed_dictionaries(parts).map(lambda values: _build(cls, descriptor, values))


def _build(cls: type, descriptor: Descriptor, values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = descriptor.fields_by_name[name]
        target = getattr(msg, name) if field.is_repeated else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif isinstance(value, Message):
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg
