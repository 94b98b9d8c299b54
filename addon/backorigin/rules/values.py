"""OSS's value forms: numbers and booleans as strings ("404", "true") and status codes as one
comma-separated string ("404,500"), as OSS's API and SDKs serialise them, read as JSON's. Strict
validation refuses "404" for a number and "true" for a boolean; these run first and turn OSS's
string forms into JSON's, and anything else that is not a string is left to the strict check."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_WHOLE_NUMBER = re.compile(r"\s*([+-]?[0-9]{1,18})\s*")  # ASCII digits only; int() also reads '٤٠٤'


def oss_integer(value: Any) -> Any:
    """A number as OSS's SDKs write it ("404") or as JSON has it (404)."""
    if isinstance(value, str):
        match = _WHOLE_NUMBER.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a whole number")
        return int(match.group(1))
    return value


def oss_boolean(value: Any) -> Any:
    """A boolean as OSS's SDKs write it ("true", "false", any case) or as JSON has it."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in ("true", "false"):
            raise ValueError(f"{value!r} is neither true nor false")
        return word == "true"
    return value


def oss_codes(value: Any) -> Any:
    """Status codes as OSS has them, one comma-separated string ("404,500", "" for none), or as a
    JSON array of numbers or numeric strings. Each code then goes through oss_integer."""
    if isinstance(value, str):
        return tuple(code.strip() for code in value.split(",") if code.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ValueError('give the codes as OSS does, "404,500", or as a list, [404, 500]')


OssInt = Annotated[int, BeforeValidator(oss_integer)]
OssBool = Annotated[bool, BeforeValidator(oss_boolean)]
StatusCode = Annotated[OssInt, Field(ge=400, le=599)]
OssCodes = Annotated[tuple[StatusCode, ...], BeforeValidator(oss_codes)]
