"""Where is a config, and what does ``--set`` change? Shipped configs and command-line settings.

The configs under ``experiments/configs/`` are installed with the package (package data of
``experiments``), so a config argument is a path *or* a shipped name, from any folder::

    selfimprove-rl run coffee_sports                         # the shipped config
    selfimprove-rl run experiments/configs/coffee_sports.toml  # the file, or the shipped one
    selfimprove-rl configs                                   # list them
    selfimprove-rl configs copy coffee_sports my.toml        # write one out to edit

``--set a.b=value`` changes one field of the config before it is validated; the value is read
as a TOML value (``10``, ``0.5``, ``true``, ``"text"``, ``[1, 2]``, ``{ arms = 6 }``) and kept
as a string when it is not one (``--set policy.name=ucb1``).
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from selfimprove_rl.errors import ConfigError, unknown_name_message

CONFIGS_PACKAGE = "experiments"
"""The package whose ``configs/`` folder holds the shipped ``*.toml`` configs."""

_SHIPPED_FOLDER = ("experiments", "configs")


class ShippedConfig(BaseModel):
    """One config shipped with the package: its name and the first sentence of its comment."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str


def _folder() -> Traversable:
    return resources.files(CONFIGS_PACKAGE) / "configs"


def _shipped_files() -> dict[str, Traversable]:
    return {
        entry.name.removesuffix(".toml"): entry
        for entry in _folder().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    }


def describe(text: str) -> str:
    r"""Return the first sentence of a config's leading ``#`` comment (``""`` without one).

    Example:
        >>> describe("# Route messages. On the simulated model.\n#   selfimprove-rl run x\n")
        'Route messages.'
    """
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if not body.strip() or body.startswith("  "):  # a blank line or a usage example
            break
        lines.append(body.strip())
    joined = " ".join(lines)
    return re.split(r"(?<=[.!?])\s", joined, maxsplit=1)[0]


def shipped_configs() -> list[ShippedConfig]:
    """Return every shipped config, by name."""
    return [
        ShippedConfig(name=name, description=describe(entry.read_text(encoding="utf-8")))
        for name, entry in sorted(_shipped_files().items())
    ]


def locate_config(spec: str | Path) -> Path | Traversable:
    """Return the config file a command-line argument means: a path, else a shipped config.

    A path that exists wins. Otherwise ``NAME``, ``NAME.toml`` and
    ``experiments/configs/NAME.toml`` (the repository path, from any folder) name the shipped
    config ``NAME``.

    Raises:
        ConfigError: no such file and no shipped config of that name (the names are listed).
    """
    path = Path(spec)
    if path.exists():
        return path
    shipped = _shipped_files()
    name = path.name.removesuffix(".toml")
    parent = path.parent.parts
    if name in shipped and (not parent or parent[-2:] == _SHIPPED_FOLDER):
        return shipped[name]
    raise ConfigError(
        f"No config file at {path} and no shipped config named {str(spec)!r}; shipped "
        f"configs: {', '.join(sorted(shipped))} (`selfimprove-rl configs` describes them; "
        "`selfimprove-rl configs copy NAME` writes one out to edit)."
    )


def copy_config(name: str, dest: str | Path | None = None) -> Path:
    """Write the shipped config ``name`` to ``dest`` (default ``./NAME.toml``) for editing.

    Args:
        name: a shipped config name (``coffee_sports``; ``.toml`` optional).
        dest: the file to write, or an existing folder to write ``NAME.toml`` into.

    Returns:
        The file written (a byte-for-byte copy).

    Raises:
        ConfigError: an unknown name, or ``dest`` already exists (never overwritten).
    """
    shipped = _shipped_files()
    key = name.removesuffix(".toml")
    if key not in shipped:
        raise ConfigError(unknown_name_message("shipped config", key, shipped))
    target = Path(dest) if dest is not None else Path(f"{key}.toml")
    if target.is_dir():
        target = target / f"{key}.toml"
    if target.exists():
        raise ConfigError(
            f"{target} already exists; refusing to overwrite it. Pass another destination "
            "or remove the file first."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as handle:  # "x": never replace a file that appeared meanwhile
        handle.write(shipped[key].read_bytes())
    return target


# ---------------------------------------------------------------------- --set a.b=value
def parse_setting(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and value (a TOML value, else the text).

    Example:
        >>> parse_setting("stopping.max_total_steps=10")
        (['stopping', 'max_total_steps'], 10)
        >>> parse_setting("policy.name=ucb1")
        (['policy', 'name'], 'ucb1')

    Raises:
        ConfigError: no ``=``, or an empty key part.
    """
    key, sep, raw = text.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(
            f"Expects --set KEY=VALUE with a dotted key (e.g. --set stopping.max_total_steps=10), "
            f"got {text!r}."
        )
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_settings(data: dict[str, Any], settings: Sequence[str]) -> dict[str, Any]:
    """Return a copy of a config mapping with every ``--set a.b=value`` applied, in order.

    Raises:
        ConfigError: a malformed setting, or one that goes below a value that is not a table.
    """
    result = copy.deepcopy(data)
    for text in settings:
        parts, value = parse_setting(text)
        table = result
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"Cannot --set {text!r}: {where} is a value ({child!r}), not a table; "
                    f"set {where}=... instead."
                )
            table = child
        table[parts[-1]] = value
    return result


def _known_fields(model: type[BaseModel], location: Sequence[str | int]) -> list[str] | None:
    """The field names of the pydantic model at ``location`` (None below a free-form dict)."""
    current = model
    for part in location:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return sorted(current.model_fields)


def settings_error(
    exc: ValidationError, model: type[BaseModel], settings: Sequence[str], *, prefix: str = ""
) -> ConfigError:
    """Turn the validation error of a config changed by ``--set`` into a one-line error.

    An unknown key gets the closest known one suggested, from the table it was set in.
    """
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error["loc"]]
        where = prefix + ".".join(location)
        known = _known_fields(model, location[:-1]) if error["type"] == "extra_forbidden" else None
        if known is not None and location:
            parts.append(f"{where}: {unknown_name_message('key', location[-1], known)}")
        else:
            parts.append(f"{where}: {error['msg']}")
    given = " ".join(f"--set {s}" for s in settings)
    return ConfigError(f"Invalid config after {given}: {'; '.join(parts)}")
