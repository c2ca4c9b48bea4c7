"""User code a config names: an import path ``package.module:attribute`` or an installed entry point's name.

A model (``model.name``) or a data set (``data.dataset``) may be a user's own. This module turns such a name
into the Python object it names, with one-line errors that name the config key, the cause and the fix. It
uses only the standard library (importlib), so the config layer stays free of torch and the FL libraries;
`fedlottery.models` and `fedlottery.data` call it with their entry-point groups and check what the object
returns.
"""
from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Any

from fedlottery.errors import ConfigError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def is_import_path(name: str) -> bool:
    """A name with a colon is an import path (registry and entry-point names never hold one)."""
    return ":" in name


def check_import_path(name: str, key: str) -> None:
    """The spelling of an import path, checked without importing anything (config load time)."""
    if is_import_path(name) and not IMPORT_PATH.match(name):
        raise ConfigError(f"{key}: {name!r} is not an import path; write package.module:attribute, e.g. "
                          "my_package.nets:build")


def entry_point_names(group: str) -> list[str]:
    """The names installed under entry-point `group`, sorted (what an error lists as choices)."""
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def resolve(name: str, group: str, key: str) -> Any | None:
    """The callable `name` stands for: an import path, else an entry point of `group`; None when `name` is
    neither (the caller names its own built-in choices). Raises ConfigError naming `key` when the module does
    not import, the attribute is missing, or the object is not callable."""
    if is_import_path(name):
        check_import_path(name, key)
        obj = _import_attribute(name, key)
    else:
        found = [ep for ep in metadata.entry_points(group=group) if ep.name == name]
        if not found:
            return None
        obj = _load_entry_point(found[0], group, key)
    if not callable(obj):
        raise ConfigError(f"{key}: {name!r} is a {type(obj).__name__}, not a function or class; point it at the "
                          "function (or class) to call")
    return obj


def resolve_or_explain(name: str, group: str, key: str, kind: str, builtin: list[str], what: str) -> Any:
    """`resolve`, or a ConfigError naming `key` when `name` is neither an import path nor an installed entry
    point: it lists the `builtin` choices, then the installed plug-ins, then how to give `what` by import path."""
    found = resolve(name, group, key)
    if found is None:
        plugins = entry_point_names(group)
        raise ConfigError(f"{key}: unknown {kind} {name!r}; choose one of {', '.join(builtin)}"
                          f"{', installed plug-ins: ' + ', '.join(plugins) if plugins else ''}, or give {what} "
                          "import path package.module:function (docs/plugins.md)")
    return found


def _import_attribute(name: str, key: str) -> Any:
    module_name, _, attribute = name.partition(":")
    obj = _import_module(module_name, key)
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name] + attribute.split(".")[:i])
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            listed = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
            raise ConfigError(f"{key}: {where!r} has no attribute {part!r} (it has: {listed or 'nothing'}); fix the "
                              f"name after the colon in {name!r}")
        obj = getattr(obj, part)
    return obj


def _import_module(module_name: str, key: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"{key}: cannot import module {module_name!r} (no module named {exc.name!r}); fix: "
                              "pip install the package that provides it, or add its directory to PYTHONPATH"
                              ) from None
        raise _import_failed(module_name, key, exc) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module raised while being imported
        raise _import_failed(module_name, key, exc) from exc


def _import_failed(module_name: str, key: str, exc: BaseException) -> ConfigError:
    message = " ".join(str(exc).split())
    return ConfigError(f"{key}: importing {module_name!r} failed: {type(exc).__name__}: {message}; run "
                       f"python -c 'import {module_name}' to see where")


def _load_entry_point(ep: metadata.EntryPoint, group: str, key: str) -> Any:
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in: name it and what it points at
        message = " ".join(str(exc).split())
        raise ConfigError(f"{key}: entry point {ep.name!r} (group {group}) = {ep.value!r} does not load: "
                          f"{type(exc).__name__}: {message}; fix or reinstall the package that declares it"
                          ) from exc


__all__ = ["IMPORT_PATH", "check_import_path", "entry_point_names", "is_import_path", "resolve", "resolve_or_explain"]
