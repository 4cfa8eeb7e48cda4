"""Configs: plain dataclasses that load from YAML and take command-line overrides.

Every stage has one flat dataclass built from shared groups (model, optimiser, output, ...).
Each field is declared once with `setting(default, help)`: the help text becomes the
command's `--help`, the docs and the error messages. Precedence is

    defaults  <  YAML file given with --config  <  command-line flags

and the resolved config is saved as `config.yaml` beside every output, so a run can be
repeated with `--config OUT/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhfkit.errors import ConfigError

C = TypeVar("C")
AliasConvert = Callable[[Any, Any], Any]


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    aliases: Mapping[str, AliasConvert | None] | None = None,
) -> Any:
    """Declare a config field: its default, help text, and the values it allows.

    `choices` lists the allowed strings; `ge`/`gt`/`le`/`lt` bound a number (>=, >, <=, <). The
    bounds are checked for every config in one place (`check_bounds`) and shown in `--help`.
    `aliases` are other names users know for the same setting (transformers' `TrainingArguments`
    names): `{name: None}` for a plain second name, `{name: convert}` when the other name counts
    in other units (`convert(value, cfg)` gives this setting's value from the alias's value and
    the config resolved without it).
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "aliases": dict(aliases or {})}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def bounds_text(metadata: Mapping[str, Any]) -> str:
    """'>= 1', '> 0 and <= 1', ... for help texts and errors ('' when unbounded)."""
    return " and ".join(f"{op} {metadata[key]:g}" for key, op, _ in _BOUNDS if metadata.get(key) is not None)


def check_bounds(cfg: Any) -> None:
    """Check every numeric setting of `cfg` against the bounds declared with it."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for key, _, ok in _BOUNDS:
            bound = f.metadata.get(key)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"setting '{f.name}': must be {bounds_text(f.metadata)}, got {value}")


def require(ok: bool, name: str, message: str) -> None:
    """Raise a ConfigError naming the setting when a rule that ties settings together fails."""
    if not ok:
        raise ConfigError(f"setting '{name}': {message}")


class Settings:
    """Base of every stage config: checks the declared bounds, then the stage's cross-setting rules.

    A stage config is a dataclass that inherits setting groups (plain dataclasses of fields) and
    this class; it overrides `check` for the rules that involve several settings at once.
    """

    STAGE: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_bounds(self)
        self.check()

    def check(self) -> None:
        """Rules between settings (one `require` each); bounds of single settings are declared instead."""


# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any, choices: tuple[str, ...] | None) -> Any:
    """Check and convert one value to the field's type; the error names the setting."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"setting '{name}': a value is required (got null)")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        if isinstance(value, str):  # from the command line: comma separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"setting '{name}': expected a list, got {value!r}")
        items = [_coerce(name, item, v, choices) for v in value]
        return [v for v in items if v != "none"] if choices and "none" in choices else items
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"setting '{name}': expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not value.strip().lstrip("-").isdigit()
        ):
            raise ConfigError(f"setting '{name}': expected an integer, got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"setting '{name}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting '{name}': expected a number, got {value!r}") from None
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"setting '{name}': expected text, got {value!r}")
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"setting '{name}': {value!r} is not one of {', '.join(choices)}")
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of setting: value, got {type(data).__name__}")
    return data


def build_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Resolve a config: defaults < YAML file < overrides (None values in overrides are ignored)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _field_types(cls)
    alias_of = aliases(cls)
    values: dict[str, Any] = {}
    converted: dict[str, tuple[str, int]] = {}  # setting -> (alias, value) for aliases in other units
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        data = read_yaml(config_file)
        recorded, expected = data.pop(STAGE_KEY, None), getattr(cls, "STAGE", None)
        if recorded is not None and expected is not None and recorded != expected:
            raise ConfigError(f"{config_file}: written by 'rlhfkit {recorded}', not '{expected}'; pass a "
                              f"{expected} config (or delete its '{STAGE_KEY}:' line)")
        sources.append((str(config_file), data))
    if overrides:
        sources.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for origin, mapping in sources:  # a later source overrides an earlier one, under either name
        seen: dict[str, str] = {}
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            target, convert = alias_of.get(name, (name, None))
            if target not in fields:
                close = difflib.get_close_matches(name, [*fields, *alias_of], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{origin}: unknown setting '{key}'{hint}")
            if target in seen:
                raise ConfigError(f"{origin}: '{seen[target]}' and '{name}' are the same setting ('{target}'); "
                                  "pass only one")
            seen[target] = name
            values.pop(target, None)
            converted.pop(target, None)
            if convert is None:
                values[target] = _coerce(target, hints[target], value, fields[target].metadata.get("choices"))
            else:
                number = _coerce(name, int, value, None)
                if number < 1:
                    raise ConfigError(f"setting '{name}': must be >= 1, got {number}")
                converted[target] = (name, number)
    cfg = cls(**values)
    for target, (alias, number) in converted.items():
        cfg = dataclasses.replace(cfg, **{target: alias_of[alias][1](number, cfg)})  # type: ignore[misc,type-var]
    return cfg


def aliases(cls: type) -> dict[str, tuple[str, AliasConvert | None]]:
    """{alias: (setting, convert or None)} declared with `setting(..., aliases=...)` on `cls`'s fields."""
    out: dict[str, tuple[str, AliasConvert | None]] = {}
    for f in dataclasses.fields(cls):
        for alias, convert in f.metadata.get("aliases", {}).items():
            out[alias] = (f.name, convert)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (YAML-safe values only)."""
    return dataclasses.asdict(cfg)


STAGE_KEY = "stage"
"""First key of a saved config.yaml: the command that wrote it (each config class's `STAGE`)."""


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, headed by the stage that wrote it (loadable again with --config)."""
    stage = getattr(cfg, "STAGE", None)
    data = ({STAGE_KEY: stage} if stage else {}) | to_dict(cfg)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each setting, for docs and --help."""
    out = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out


def _type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    name = getattr(base, "__name__", str(base))
    if typing.get_origin(base) is list:
        name = "list"
    return name + (" | None" if optional else "")


# ---------------------------------------------------------------------------------------------
# Command-line options from a config class (typer reads the generated signature)
# ---------------------------------------------------------------------------------------------
def _cli_type(tp: Any) -> Any:
    base, _ = _unwrap_optional(tp)
    if typing.get_origin(base) is list:
        return str  # comma separated
    return base if base in (bool, int, float, str) else str


def config_command(cls: type[C], run: Callable[[C], Any], doc: str) -> Callable[..., Any]:
    """Build a typer command function whose options are the fields of `cls`.

    Every field becomes `--field-name` (booleans `--x/--no-x`), with its help text and
    default shown; `--config FILE` reads a YAML file first. Options left out keep the value
    from the file or the default.
    """
    import typer

    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", "-c", help="YAML file of settings (flags override it)."),
            annotation=typing.Optional[Path],
        )
    ]
    hints = _field_types(cls)
    own = set(cls.__dict__.get("__annotations__", {}))
    # The stage's own settings first, then the shared groups it inherits.
    ordered = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)  # type: ignore[arg-type]
    for f in ordered:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        if bounds_text(f.metadata):
            help_text += f" Allowed: {bounds_text(f.metadata)}."
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        flag = "--" + f.name.replace("_", "-")
        tp = _cli_type(hints[f.name])
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if tp is bool else [flag]
        for alias, convert in f.metadata.get("aliases", {}).items():
            alias_flag = "--" + alias.replace("_", "-")
            if convert is None:  # a second spelling of the same option (not used for booleans)
                decls.append(alias_flag)
            else:  # counts in other units: its own option, converted by build_config
                params.append(inspect.Parameter(
                    alias, inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[int],
                    default=typer.Option(None, alias_flag, help=f"The same setting as {flag}, given as "
                                         f"transformers' {alias}: {convert.__doc__}")))
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=help_text, show_default=shown or "''"),
                annotation=typing.Optional[tp],
            )
        )

    def command(**kwargs: Any) -> Any:
        config_file = kwargs.pop("config", None)
        cfg = build_config(cls, config_file, kwargs)
        return run(cfg)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command
