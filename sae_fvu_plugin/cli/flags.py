"""Command lines generated from option dataclasses (as sparsify does with its configs):
each field becomes a flag with its help text and its default, so the two cannot drift.

Light on purpose: nothing here imports torch, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from ..validate import UsageError


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line naming the problem (and ``--help`` for more)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def plain_doc(doc: str | None) -> str:
    """A docstring as ``--help`` text: reST markup (double backticks, ``:class:`~x``` roles)
    removed, indentation of continuation lines undone."""
    import inspect
    import re

    text = inspect.cleandoc(doc or "")
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def _kind(annotation: Any) -> tuple[str, bool]:
    """(base type name, optional) from a field's annotation string."""
    text = str(annotation).replace(" ", "")
    optional = "None" in text.split("|")
    parts = [p for p in text.split("|") if p != "None"]
    base = parts[0] if parts else "str"
    return base, optional


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    title: str | None = None,
) -> None:
    """One flag per field of the dataclass ``cls`` (help text from ``metadata['help']``,
    the choices from ``metadata['choices']`` listed in it, the default shown)."""
    skip = set(skip)
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = (defaults or {}).get(f.name, _default(f))
        base, optional = _kind(f.type)
        help_text = str(f.metadata.get("help", "")).replace("%", "%%")  # argparse formats it
        if f.metadata.get("positional"):
            group.add_argument(f.name, type=_scalar(base), help=help_text)
            continue
        shown = "none" if default is None else default
        states_default = "(default" in help_text  # the help already says what the default means
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        if f.metadata.get("required"):
            kw["required"] = True
        if base == "bool":
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] = help_text if states_default else f"{help_text} (default: {shown})"
        elif base.startswith("list["):
            kw["nargs"] = "*" if f.metadata.get("empty") else "+"
            kw["type"] = _scalar(base[5:-1])
            shown_list = " ".join(map(str, default)) if default else "none"
            kw["help"] = help_text if states_default else f"{help_text} (default: {shown_list})"
        else:
            kw["type"] = _scalar(base)
            if "choices" in f.metadata:  # validated by the options class, which suggests fixes
                help_text += f" [one of: {', '.join(f.metadata['choices'])}]"
            if kw.get("required"):
                kw["help"] = f"{help_text} (required)"
            else:
                kw["help"] = help_text if states_default else f"{help_text} (default: {shown})"
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        group.add_argument(flag(f.name), **kw)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _scalar(name: str) -> Any:
    return {"int": int, "float": float, "str": str, "Any": str}.get(name, str)


def collect(args: argparse.Namespace, cls: type, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields."""
    skip = set(skip)
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.name not in skip and hasattr(args, f.name)
    }


class Interrupted(Exception):
    """Ctrl-C during a command; the message says what was kept and how to go on."""


def run_main(main: Any, argv: list[str] | None) -> Any:
    """Call ``main(argv)``; a :class:`UsageError` (or a ``ValueError``/``TypeError`` raised
    while validating options) becomes one line on stderr and exit status 2; Ctrl-C one line
    (where the progress is and how to resume) and exit status 130."""
    try:
        return main(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; run the command again.", file=sys.stderr)
        raise SystemExit(130) from None
