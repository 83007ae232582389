"""Name → object registries.

Strings are dispatched only here: an unknown name raises a `ConfigError` listing the valid names.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from secateurs.core.errors import ConfigError
from secateurs.core.plugins import providers

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plug-ins (criteria, allocations, models, data sets …).

    Reading it (`get`, `names`, `help`, `in`) first imports the modules declared to register into
    it with `core.plugins.provide` (modules above it in the layers, loaded only when needed).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._provided: set[str] = set()

    def _load_providers(self) -> None:
        for module in providers(self.kind):
            if module not in self._provided:
                self._provided.add(module)  # first: the provider reads this registry as it registers
                try:
                    importlib.import_module(module)
                except BaseException:
                    self._provided.discard(module)  # the next read retries, and fails as loudly
                    raise

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: register `obj` under `name`; a duplicate name is a programming error."""

        def deco(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
        self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def remove(self, name: str) -> T:
        """Unregister `name` (a plug-in that is unloaded, or one a test registered for itself)."""
        self._load_providers()
        self._help.pop(name, None)
        return self._items.pop(name)

    def get(self, name: str) -> T:
        self._load_providers()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint}",
                fix=f"use one of: {', '.join(sorted(self._items))}",
            ) from None

    def build(self, name: str, **options: object) -> object:
        """Call the registered factory with `options`; an option it does not take is a ConfigError."""
        factory = self.get(name)
        check_options(factory, options, where=f"{self.kind} {name!r}")  # type: ignore[arg-type]
        return factory(**options)  # type: ignore[operator]

    def help(self, name: str) -> str:
        self._load_providers()
        return self._help.get(name, "")

    def names(self) -> list[str]:
        self._load_providers()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_providers()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def options_schema(
    factory: Callable[..., object], *, every_parameter: bool = False, filled: tuple[str, ...] = ()
) -> type[BaseModel] | None:
    """A pydantic model of a function's keyword options, from its annotations and defaults.

    None when the function takes arbitrary keywords. Lets a plain function (an allocation, a
    projection) have its option *values* validated when a recipe is read, not only their names.
    Options are its keyword-only and defaulted parameters; with `every_parameter` (a user's
    factory, called with the options alone) every parameter is one, required unless it has a
    default or is among the `filled` ones the caller supplies.
    """
    sig = inspect.signature(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    try:
        hints = get_type_hints(inspect.unwrap(factory), include_extras=True)
    except (NameError, TypeError):  # an annotation that does not resolve: check names only
        hints = {}
    fields: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        has_default = p.default is not inspect.Parameter.empty
        optional = p.kind is p.POSITIONAL_OR_KEYWORD and (has_default or every_parameter)
        if p.kind is not p.KEYWORD_ONLY and not optional:
            continue
        default = p.default if has_default else (None if name in filled else ...)
        fields[name] = (hints.get(name, Any), default)
    return create_model(
        f"{getattr(factory, '__name__', 'factory')}_options",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def validate_options(
    factory: Callable[..., object],
    options: dict[str, object],
    *,
    where: str,
    every_parameter: bool = False,
    filled: tuple[str, ...] = (),
) -> None:
    """Raise a ConfigError naming an option `factory` does not take, or a value its annotation refuses
    (and, with `every_parameter`, a required parameter the options leave out: see `options_schema`)."""
    check_options(factory, options, where=where)
    schema = options_schema(factory, every_parameter=every_parameter, filled=filled)
    if schema is None:
        return
    try:
        schema(**options)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where}: invalid option ({problems})") from None


def check_options(factory: Callable[..., object], options: dict[str, object], *, where: str) -> None:
    """Raise a ConfigError naming any option that `factory` does not accept."""
    sig = inspect.signature(factory)
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
    ]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        raise ConfigError(
            f"{where} has no option {', '.join(map(repr, unknown))}",
            fix=(f"did you mean {close[0]!r}? " if close else "")
            + f"valid options: {', '.join(accepted) or '(none)'}",
        )
