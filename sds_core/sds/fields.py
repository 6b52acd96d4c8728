"""Typed settings from `--kebab-case` flags and prefixed environment variables, with the standard
library only: a frozen dataclass whose fields are declared with `setting()` (default, help,
bounds, pattern), parsed once at the edge. The per-pod agent pays for every import 5,000 times,
so no settings framework sits on its path; the webhook and issuer keep pydantic.

Values given as text (a variable, a flag, or a string passed to the constructor) are parsed by
the field's type: lists as "a,b" or a JSON list, maps as JSON, booleans as true/false/1/0/yes/
no/on/off, `X | None` empty as None. Errors name the field and what is wrong, never the value
(it may be a Vault token)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T", bound="Settings")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """Every problem of one parse, one `  field: what is wrong` line each."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(f"  {p}" for p in problems))
        self.problems = list(problems)


class Secret:
    """A value that never shows in a repr, a log line or an error (a Vault token)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, help: str = "",
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            pattern: str | None = None) -> Any:
    """A field with its help text and checks (the bounds of a number, the pattern of a string)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def split(text: str) -> list[str]:
    """Lists as a pod spec writes them ("a,b,c"); a JSON list works too."""
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return [str(v) for v in value]
    return [part.strip() for part in text.split(",") if part.strip()]


def _optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_text(text: str, tp: Any) -> Any:
    tp, optional = _optional(tp)
    if optional and text.strip() == "":
        return None
    origin = typing.get_origin(tp)
    if tp is str:
        return text
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError("must be true or false")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    if tp is Path:
        return Path(text)
    if tp is Secret:
        return Secret(text)
    if origin is list:
        return split(text)
    if origin is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object") from None
        return value
    if origin is Literal:
        return text.strip()
    raise TypeError(f"no parser for {tp!r}")


def _check_value(value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """The value as the field's type, checked against its bounds; a ValueError says what is wrong."""
    declared = tp
    tp, optional = _optional(tp)
    if isinstance(value, str) and tp is not str:
        value = _parse_text(value, declared)
    if value is None:
        if optional:
            return None
        raise ValueError("is required")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError("must be one of " + ", ".join(repr(c) for c in typing.get_args(tp)))
    elif origin is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        value = list(value)
    elif origin is dict:
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError("must be a map of strings")
        value = {k: _check_value(v, value_type, {}) for k, v in value.items()}
    elif tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif tp is Path and isinstance(value, str):
        value = Path(value)
    elif tp is Secret and isinstance(value, str):
        value = Secret(value)
    elif isinstance(tp, type) and not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        raise ValueError(f"must be {getattr(tp, '__name__', tp)}")
    _bounds(value, meta)
    return value


def _bounds(value: Any, meta: Mapping[str, Any]) -> None:
    for key, ok, words in (("ge", lambda v, b: v >= b, "greater than or equal to"),
                           ("gt", lambda v, b: v > b, "greater than"), ("le", lambda v, b: v <= b, "less than or equal to"),
                           ("lt", lambda v, b: v < b, "less than")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ValueError(f"must be {words} {bound:g}")
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
        raise ValueError(f"must match {meta['pattern']}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of a settings dataclass: ENV_PREFIX names its variables."""

    ENV_PREFIX: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = []
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            try:
                object.__setattr__(self, f.name, _check_value(getattr(self, f.name), hints[f.name], f.metadata))
            except (ValueError, TypeError) as e:
                problems.append(f"{f.name}: {e}")
        if problems:
            raise SettingsError(problems)
        try:
            self.validate()
        except ValueError as e:
            raise SettingsError([f"settings: {e}"]) from None

    def validate(self) -> None:
        """Checks across fields (a subclass's); may complete derived fields with object.__setattr__."""

    @classmethod
    def load(cls: type[T], args: Sequence[str] = (), environ: Mapping[str, str] | None = None,
             prog: str | None = None) -> T:
        """From flags (`--socket-path X`) and variables (`SDS_SOCKET_PATH`), flags winning.
        --help prints every setting and exits 0; an unknown flag exits 2 (argparse)."""
        import os  # lazy: only the loader reads the process environment

        environ = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if (value := environ.get(cls.ENV_PREFIX + f.name.upper())) is not None:
                given[f.name] = value
        flags = vars(parser(cls, prog).parse_args(list(args)))
        given.update({k: v for k, v in flags.items() if v is not None})
        return cls(**given)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def default(cls, name: str) -> Any:
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_hints_cache")
    if cached is None:
        cached = typing.get_type_hints(cls, include_extras=False)
        type.__setattr__(cls, "_hints_cache", cached)
    return cached


def parser(cls: type[Settings], prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=f"Every flag is also a {cls.ENV_PREFIX}* variable "
                                "(--socket-path: SDS_SOCKET_PATH); flags win.")
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _optional(hints[f.name])
        choices = f" {{{','.join(typing.get_args(tp))}}}" if typing.get_origin(tp) is Literal else ""
        default = "" if tp is Secret else f" (default: {cls.default(f.name)!s})"
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="VALUE",
                       help=f"{f.metadata.get('help', '')}{choices}{default}".strip())
    return p
