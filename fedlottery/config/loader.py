"""The YAML machinery behind every config: a strict loader, dataclass building with key paths in every
error, `--set KEY=VALUE` overrides, and the checks shared by every schema (seeds, devices).

It imports nothing from the package but `fedlottery.errors`, and no FL library: the schemas
(`fedlottery.config.sections`, `.imp`, `.federated`) build on it, and the checks that need the registries live
beside those registries (`fedlottery.runtime.experiment` runs them all).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from fedlottery.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's SeedSequence takes any int, torch.manual_seed and random.seed do not agree above
NONFINITE = "nonfinite"  # field(metadata={NONFINITE: True}) lets a float field take inf / nan
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_TRAINING_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")



def check_seed(value: Any, key: str) -> None:
    """A seed is an integer in [0, 2**32 - 1] (what every RNG the simulator seeds accepts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}: {value!r} is not a seed; use an integer in [0, {SEED_MAX}] (2**32 - 1)")


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively, then validate.

    Floats must be finite unless the field says otherwise (``field(metadata={NONFINITE: True})``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = f"{path}." if path else ""
    for name in data:
        if not isinstance(name, str):
            raise ConfigError(f"{where}{name!r}: keys must be names (strings), got {type(name).__name__}; "
                              f"valid keys here are {', '.join(sorted(fields))}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys here are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key, bool(fields[name].metadata.get(NONFINITE)))
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name not in kwargs and hasattr(value, "validate"):
            value.validate(f"{path}.{f.name}" if path else f.name)
    return obj


def _coerce(hint: Any, value: Any, key: str, nonfinite: bool = False) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors, shaped = [], []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, nonfinite)
            except ConfigError as err:
                errors.append(err)
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    shaped.append(err)  # a mapping meant for this section: its own error says what is wrong
        if len(shaped) == 1:
            raise shaped[0]
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]", nonfinite) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}", nonfinite) for k, v in value.items()}
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value} is too large for a floating-point number") from None
        if not nonfinite and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number; give a finite value (.inf / .nan are "
                              "not allowed here)")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # a bug in a config dataclass, not user input


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys it merges in
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first given at line {first}); "
                                  "give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning file and syntax problems into one-line ConfigErrors.

    Refused: a missing file, a directory, a binary or non-UTF-8 file, an empty file (no silent defaults),
    invalid YAML, duplicate keys, and a top level that is not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file such as configs/default.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; give a YAML file such as configs/default.yaml")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}); give a YAML config file") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path} is a binary file (it holds NUL bytes); give a YAML config file")
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise ConfigError(f"config file {path}: not valid YAML{where}: {what}; fix the syntax there") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty (no settings); write the experiment's settings in it, "
                          "e.g. start from configs/default.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of settings (key: value), "
                          f"got a {type(data).__name__}")
    return data


def dotted_parts(key: str) -> list[str] | None:
    """`a."b:c".d` -> ["a", "b:c", "d"]; None when the key is not dot-separated plain or quoted parts."""
    parts = re.findall(r'(?:^|\.)(?:"([^"]*)"|([^."]*))', key)
    joined = ".".join(f'"{q}"' if q else p for q, p in parts)
    if joined != key:
        return None
    return [q or p for q, p in parts]


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one command-line override, "section.key=value" (the value read as YAML, so `true`, `0.3`,
    `[a, b]` and `{k: v}` mean what they mean in the file), to a config mapping loaded by `load_yaml`. Missing
    sections are created; unknown keys are left for `from_dict` to refuse by name. A part may be quoted, as
    errors print names YAML needs quoted: `strategy_options."flwr:FedProx".proximal_mu=0.1`."""
    key, sep, text = assignment.partition("=")
    parts = dotted_parts(key.strip())
    if not sep or not parts or not all(parts):
        raise ConfigError(f"--set {assignment!r}: write KEY=VALUE with a dotted key, e.g. "
                          "--set strategy_options.flash-jmwst.personal_bn=true")
    try:
        value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML ({' '.join(str(err).split())})") from None
    where = data
    for depth, part in enumerate(parts[:-1]):
        if where.get(part) is None:  # absent, or an empty YAML section (`fedpm:` with nothing under it)
            where[part] = {}
        where = where[part]
        if not isinstance(where, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
    where[parts[-1]] = value


def to_dict(config: Any) -> dict:
    """The config as plain data, for summary.json."""
    return dataclasses.asdict(config)
