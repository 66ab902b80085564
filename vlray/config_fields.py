"""A config dataclass's fields as data (name, type, default, one-line help), so the server's arguments, the batch
job's flags and Python all come from the one definition in vlray/config.py, never copied by hand.

The help of a field is the docstring under it (`field: int = 3` then `\"\"\"What it does.\"\"\"`), read from the
class's source with `ast`: a field added later, with its docstring, shows up in every surface by itself.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One field of a config dataclass, as every surface sees it."""

    name: str
    annotation: Any  # the resolved type, e.g. int | None or Literal["a", "b"]
    default: Any  # dataclasses.MISSING for a required field
    help: str

    @property
    def is_required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def is_optional(self) -> bool:
        """None is one of its values (`int | None`)."""
        return type(None) in typing.get_args(self.annotation) or self.annotation is type(None)

    @property
    def base_type(self) -> Any:
        """The type without None: int for `int | None`, the Literal for `Literal[...] | None`."""
        args = [a for a in typing.get_args(self.annotation) if a is not type(None)]
        if _is_union(self.annotation) and len(args) == 1:
            return args[0]
        return self.annotation

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The values of a Literal field, else None."""
        base = self.base_type
        return tuple(typing.get_args(base)) if typing.get_origin(base) is Literal else None


@cache
def config_fields(cls: type) -> tuple[ConfigField, ...]:
    """The fields of a dataclass (their docstrings as help) or of a pydantic model (their descriptions), in
    order, with their resolved types."""
    pydantic_fields = getattr(cls, "model_fields", None)
    if pydantic_fields is not None:
        return tuple(ConfigField(name, f.annotation, dataclasses.MISSING if f.is_required() else f.get_default(
            call_default_factory=True), " ".join((f.description or "").split())) for name, f in pydantic_fields.items())
    hints = typing.get_type_hints(cls)
    docs = field_docstrings(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(ConfigField(f.name, hints[f.name], default, docs.get(f.name, "")))
    return tuple(out)


def field_docstrings(cls: type) -> dict[str, str]:
    """{field: its docstring joined into one line} from the class body's `name: type` + string pairs."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


# -- argparse: one flag per field ---------------------------------------------------------------------------

def flag_of(name: str) -> str:
    """max_batch_size -> --max-batch-size."""
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                         aliases: Mapping[str, Iterable[str]] | None = None, prefix: str = "",
                         exclude: Iterable[str] = ()) -> None:
    """A flag for every field of `cls` (dest `prefix + name`), typed and with its help and default.

    Booleans get `--x / --no-x`; Literals get choices; `X | None` fields take an X and default to None.
    `aliases`: extra flag spellings per field (flags a command had before its fields were derived); `exclude`:
    fields the command takes otherwise (a positional argument)."""
    excluded = set(exclude)
    for f in config_fields(cls):
        if f.name in excluded:
            continue
        flags = [flag_of(prefix + f.name), *(aliases or {}).get(f.name, ())]
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "help": (f.help or f.name).replace("%", "%%")}
        if f.is_required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        base = f.base_type
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.choices is not None:
            kwargs["choices"] = f.choices
            kwargs["type"] = type(f.choices[0])
        elif base in (int, float, str):
            kwargs["type"] = base
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: type {f.annotation!r} has no command-line form; give it "
                            "a bool, int, float, str or Literal type (optionally | None)")
        parser.add_argument(*flags, **kwargs)


def config_from_namespace(cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """An instance of `cls` from the flags add_config_arguments made (its __post_init__ checks them)."""
    values = {f.name: getattr(args, prefix + f.name) for f in config_fields(cls)}
    return cls(**{**values, **overrides})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default, and the description as written."""
