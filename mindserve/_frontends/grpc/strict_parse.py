"""Parsing protobuf requests strictly.

protobuf keeps a field of the wrong wire type (or an unknown number) as an "unknown field" and leaves the real
field at its default, so a malformed request would parse "successfully" into something else. Here such a
request is refused with a text that names the field.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Type, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from mindserve._errors import clip

M = TypeVar("M", bound=Message)


class InvalidMessage(Exception):
    """A request message that cannot be taken as it is; the text says why."""


def _first_unknown(message: Message, path: str) -> Optional[str]:
    """The path of the first field of ``message`` (recursively) that protobuf could not place, or None."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        field = unknown[0]
        return f"{path or message.DESCRIPTOR.name}: field number {field.field_number} (wire type {field.wire_type})"
    for desc, value in message.ListFields():
        if desc.message_type is None:
            continue
        name = f"{path}.{desc.name}" if path else desc.name
        items: Iterator[tuple[str, Any]]
        if desc.message_type.GetOptions().map_entry:
            if desc.message_type.fields_by_name["value"].message_type is None:
                continue
            items = ((f"{name}[{clip(repr(k))}]", v) for k, v in value.items())
        elif desc.label == desc.LABEL_REPEATED:
            items = ((f"{name}[{i}]", v) for i, v in enumerate(value))
        else:
            items = iter([(name, value)])
        for sub_path, sub in items:
            found = _first_unknown(sub, sub_path)
            if found:
                return found
    return None


def parse_strict(message_class: Type[M], data: bytes) -> M:
    """Parse ``data`` as ``message_class``; raise InvalidMessage when it is not valid protobuf or holds a field
    of unknown number or wrong wire type."""
    kind = message_class.DESCRIPTOR.name
    try:
        message = message_class.FromString(data)
    except DecodeError as exc:
        raise InvalidMessage(f"the request is not a valid {kind} message: {exc}") from None
    # Fast path: without unknown fields a message re-serializes to at most its input size; if dropping them
    # changes nothing, there were none.
    size = message.ByteSize()
    message.DiscardUnknownFields()
    if message.ByteSize() == size:
        return message
    found = _first_unknown(message_class.FromString(data), "")
    raise InvalidMessage(
        f"the request is not a valid {kind} message: {found} has an unknown number or a wrong wire type"
    )
