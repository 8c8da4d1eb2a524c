"""Name → class registries for distillation losses and weightings, and their option schemas.

A registry is a read-only mapping filled by the `register(name)` class decorator. The first lookup
imports every module of the registry's package, so adding a loss or a weighting means adding one
file that decorates its class; nothing else lists it.

Each registered class declares its options as a pydantic model `Options` (names, types, defaults,
bounds): the one schema that YAML configs, the CLI's `--set` overrides and Python calls all go
through. `parse_options` turns a validation failure into one ValueError line.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["NoOptions", "OptionsModel", "Registry", "option_defaults", "parse_options"]


class Named(Protocol):
    """What a registered class has: the name it was registered under."""

    name: ClassVar[str]


T = TypeVar("T", bound=type[Named])


class OptionsModel(BaseModel):
    """Base of every option schema: unknown keys are errors, parsed options are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(OptionsModel):
    """The schema of a class without options."""


def parse_options(schema: type[OptionsModel], given: Mapping[str, Any], owner: str) -> OptionsModel:
    """Validate `given` against `schema`; ValueError naming `owner`, the option and the problem."""
    try:
        return schema(**given)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'options'}: {x['msg']}" for x in e.errors())
        raise ValueError(f"{owner}: bad options ({problems})") from None


def option_defaults(schema: type[BaseModel]) -> dict[str, Any]:
    """The default of every option of `schema` that has one, as plain data: stored runs are keyed by
    them too, so that a changed default is a different run, never a stale one reused."""
    out = {}
    for name, field in schema.model_fields.items():
        if not field.is_required():
            out[name] = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(out, default=str))


class Registry(Mapping[str, T], Generic[T]):
    """Registered classes by name, e.g. `LOSSES["l2"]`; `kind` names them in error messages.

    package: dotted name of the package whose modules hold the registered classes; they are all
    imported at the first lookup.
    """

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._classes: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under `name` and set its `name` attribute."""

        def add(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._classes[name].__qualname__})")
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        module = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def lookup(self, name: str) -> T:
        """The class registered as `name`; ValueError listing the known names otherwise."""
        self._load()
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._classes)}")
        return self._classes[name]

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        self._load()
        return len(self._classes)
