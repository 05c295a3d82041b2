"""The value types' decorators: ``frozen`` and ``define`` build the classes that
``attrs.frozen`` and ``attrs.define`` would, without importing attrs.

Every run of ``hsync`` creates its value types (nodes, ops, options, the backend
contract's values) before it does anything, and attrs costs more than the rest of a
small sync: its import (``typing``, ``inspect`` with ``ast`` and ``dis``, ``platform``,
its own validators built as attrs classes) and the 22 classes built with it took 42-47
ms of a 10-file no-op of 89-104 ms (bench/HISTORY.md, "The fixed cost of a small
sync"). The classes are declared as before (annotations, ``field(default=...,
factory=..., eq=..., repr=..., init=..., kw_only=..., converter=...)``) and get what
attrs generates for them: ``__slots__`` (and a weakref slot), an ``__init__`` (private
names take their public alias, as attrs does), ``__repr__``, ``__eq__`` on the fields
compared (``eq=False`` leaves one out), ``__hash__`` for a frozen class (None for a
mutable one), ``__setattr__``/``__delattr__`` refused on a frozen instance
(``FrozenInstanceError``), pickling, ``__match_args__``; ``__init__`` ends with the
class's ``__attrs_post_init__``, where it has one. A method the class defines
itself is kept (attrs's ``auto_detect``).

To anything that asks attrs, they are attrs classes: ``__attrs_attrs__`` is built on
first use, by attrs, from the same declaration, so ``attrs.fields``, ``attrs.has``,
``attrs.evolve`` and ``attrs.astuple`` work on them as before (the wire protocol, a
third-party backend, the tests). hsync's own code calls ``evolve`` here, which needs
no attrs import.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the point of this module is a cheap import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_: object) -> Callable[[T], T]:
        return lambda f: f


COMPILE_AFTER = 16
"""A class's ``__init__`` is compiled from source once this many instances were made."""


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen value was set or deleted (attrs's error of that name)."""

    def __init__(self) -> None:
        super().__init__("can't set attribute")


class _Nothing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()
"""No default: the field must be given."""


class _Field:
    __slots__ = ("alias", "converter", "default", "eq", "factory", "init", "kw_only", "name",
                 "repr")

    def __init__(
        self, default: Any, factory: Callable[[], Any] | None, eq: bool, repr: bool,
        init: bool, kw_only: bool, converter: Callable[[Any], Any] | None,
    ) -> None:
        self.name = self.alias = ""
        """The field's attribute, and the ``__init__`` argument that sets it (a
        private name's alias drops its underscores, as attrs's)."""
        self.default, self.factory, self.eq, self.repr = default, factory, eq, repr
        self.init, self.kw_only, self.converter = init, kw_only, converter


def field(
    *, default: Any = NOTHING, factory: Callable[[], Any] | None = None, eq: bool = True,
    repr: bool = True, init: bool = True, kw_only: bool = False,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """A field's declaration, as ``attrs.field`` takes it (these parameters only)."""
    return _Field(default, factory, eq, repr, init, kw_only, converter)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(maybe_cls: type[T] | None = None, *, kw_only: bool = False) -> Any:
    """``attrs.frozen``: a slotted, immutable, hashable value class."""
    if maybe_cls is None:
        return lambda cls: _build(cls, frozen=True, kw_only=kw_only)
    return _build(maybe_cls, frozen=True, kw_only=kw_only)


@dataclass_transform(field_specifiers=(field,))
def define(maybe_cls: type[T] | None = None, *, kw_only: bool = False) -> Any:
    """``attrs.define``: a slotted, mutable class compared by value (not hashable)."""
    if maybe_cls is None:
        return lambda cls: _build(cls, frozen=False, kw_only=kw_only)
    return _build(maybe_cls, frozen=False, kw_only=kw_only)


def evolve(inst: T, **changes: Any) -> T:
    """A copy of ``inst`` with ``changes`` (``attrs.evolve``; for these classes and
    for attrs's own)."""
    cls = type(inst)
    fields: tuple[_Field, ...] | None = getattr(cls, "__value_fields__", None)
    if fields is None:  # an attrs class
        import attrs

        return attrs.evolve(inst, **changes)  # type: ignore[misc]
    for f in fields:
        if f.init and f.alias not in changes:
            changes[f.alias] = getattr(inst, f.name)
    return cls(**changes)


def astuple(inst: Any) -> tuple[Any, ...]:
    """The values of ``inst``'s fields, in order (``attrs.astuple(recurse=False)``)."""
    return tuple(getattr(inst, f.name) for f in type(inst).__value_fields__)


def field_names(cls: type) -> tuple[str, ...]:
    """The names of a value class's fields, in order (``attrs.fields``' names)."""
    fields: tuple[_Field, ...] = cls.__dict__["__value_fields__"]
    return tuple(f.name for f in fields)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar", "t.ClassVar"))


def _build(cls: type[T], *, frozen: bool, kw_only: bool) -> type[T]:
    if any(getattr(b, "__value_fields__", None) is not None for b in cls.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: a value class cannot inherit fields")
    body = dict(cls.__dict__)
    fields: list[_Field] = []
    for name, annotation in body.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = body.pop(name, NOTHING)
        f = value if isinstance(value, _Field) else _Field(
            value, None, True, True, True, False, None
        )
        f.name, f.alias = name, name.lstrip("_")
        f.kw_only = f.kw_only or kw_only
        fields.append(f)
    names = tuple(f.name for f in fields)
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    has_weakref = any("__weakref__" in getattr(b, "__dict__", {}) for b in cls.__mro__[1:])
    body["__slots__"] = names if has_weakref else (*names, "__weakref__")
    body["__qualname__"] = cls.__qualname__
    body["__value_fields__"] = tuple(fields)
    body["__match_args__"] = tuple(f.name for f in fields if f.init and not f.kw_only)
    own = set(body)
    generated = _methods(cls.__name__, fields, frozen, "__attrs_post_init__" in body)
    for name, method in generated.items():
        if name not in own:
            body[name] = method
    if "__eq__" in own and "__hash__" not in own and frozen:
        body["__hash__"] = generated["__hash__"]
    body["__attrs_attrs__"] = _AttrsView()
    meta: Any = type(cls)
    new: Any = meta(cls.__name__, cls.__bases__, body)
    # methods that use super() or __class__ refer to the class by a closure cell
    for value in body.values():
        fn = value.__func__ if isinstance(value, classmethod | staticmethod) else (
            value.fget if isinstance(value, property) else value
        )
        if fn.__class__ is _FUNCTION and fn.__closure__:
            free = fn.__code__.co_freevars
            if "__class__" in free:
                fn.__closure__[free.index("__class__")].cell_contents = new
    return new


_FUNCTION = type(_build)


def _methods(
    cls_name: str, fields: list[_Field], frozen: bool, post_init: bool
) -> dict[str, Any]:
    """The generated methods. ``__init__`` binds its arguments from the fields for the
    first ``COMPILE_AFTER`` instances, then is compiled from source (as attrs does: a
    node is built per key looked at, that must be quick), so the classes a run
    instantiates a few times cost no compile; the others are closures over C getters."""
    from operator import attrgetter

    names = tuple(f.name for f in fields)
    compared = [f.name for f in fields if f.eq]
    key = attrgetter(*compared) if len(compared) > 1 else (
        (lambda obj: (getattr(obj, compared[0]),)) if compared else (lambda obj: ())
    )
    everything = attrgetter(*names) if len(names) > 1 else (
        (lambda obj: (getattr(obj, names[0]),)) if names else (lambda obj: ())
    )
    shown = [(f.alias, f.name) for f in fields if f.repr]

    made = [0]
    positional = [f for f in fields if f.init and not f.kw_only]
    aliases = {f.alias: f for f in fields if f.init}

    def bind(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """What the compiled ``__init__`` does, read from the fields (slower per call,
        no compile: most classes are instantiated a few times per run)."""
        if len(args) > len(positional):
            raise TypeError(f"{cls_name}.__init__() takes {len(positional) + 1} positional "
                            f"arguments but {len(args) + 1} were given")
        given = dict(kwargs)
        for f, value in zip(positional, args, strict=False):
            alias = f.alias
            if alias in given:
                raise TypeError(f"{cls_name}.__init__() got multiple values for argument "
                                f"'{alias}'")
            given[alias] = value
        for name in given:
            if name not in aliases:
                raise TypeError(f"{cls_name}.__init__() got an unexpected keyword argument "
                                f"'{name}'")
        for f in fields:
            alias = f.alias
            if f.init and alias in given:
                value = given[alias]
            elif f.factory is not None:
                value = f.factory()
            elif f.default is not NOTHING:
                value = f.default
            else:
                raise TypeError(f"{cls_name}.__init__() missing 1 required argument: "
                                f"'{alias}'")
            if f.converter is not None:
                value = f.converter(value)
            object.__setattr__(self, f.name, value)
        if post_init:
            self.__attrs_post_init__()

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        made[0] += 1
        if made[0] <= COMPILE_AFTER:
            bind(self, args, kwargs)
            return
        cls = type(self)
        init = _compile_init(cls_name, fields, post_init)
        for klass in cls.__mro__:  # the value class itself (not a subclass of it)
            if klass.__dict__.get("__init__") is __init__:
                type.__setattr__(klass, "__init__", init)
                break
        init(self, *args, **kwargs)

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return key(self) == key(other)

    def __hash__(self: Any) -> int:
        return hash((cls_name, key(self)))

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{alias}={getattr(self, name)!r}" for alias, name in shown)
        return f"{self.__class__.__qualname__}({inner})"

    def __getstate__(self: Any) -> tuple[Any, ...]:
        return tuple(everything(self)) if len(names) > 1 else everything(self)

    def __setstate__(self: Any, state: tuple[Any, ...]) -> None:
        for name, value in zip(names, state, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise FrozenInstanceError()

    def __delattr__(self: Any, name: str) -> None:
        raise FrozenInstanceError()

    out: dict[str, Any] = {
        "__init__": __init__, "__eq__": __eq__, "__hash__": __hash__, "__repr__": __repr__,
        "__getstate__": __getstate__, "__setstate__": __setstate__,
    }
    if frozen:
        out["__setattr__"], out["__delattr__"] = __setattr__, __delattr__
    else:
        out["__hash__"] = None  # mutable and compared by value: not hashable
    return out


def _compile_init(cls_name: str, fields: list[_Field], post_init: bool) -> Any:
    globs: dict[str, Any] = {"NOTHING": NOTHING, "_set": object.__setattr__}
    positional: list[str] = []
    keywords: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields):
        alias = f.alias
        if f.factory is not None:
            globs[f"_f{i}"] = f.factory
        elif f.default is not NOTHING:
            globs[f"_d{i}"] = f.default
        if not f.init:
            value = f"_f{i}()" if f.factory is not None else f"_d{i}"
        else:
            if f.factory is not None:
                param, value = f"{alias}=NOTHING", f"_f{i}() if {alias} is NOTHING else {alias}"
            elif f.default is not NOTHING:
                param, value = f"{alias}=_d{i}", alias
            else:
                param, value = alias, alias
            (keywords if f.kw_only else positional).append(param)
        if f.converter is not None:
            globs[f"_c{i}"] = f.converter
            value = f"_c{i}({value})"
        body.append(f"    _set(self, {f.name!r}, {value})")
    if post_init:
        body.append("    self.__attrs_post_init__()")
    params = ["self", *positional, *(["*", *keywords] if keywords else [])]
    source = "\n".join([f"def __init__({', '.join(params)}):", *(body or ["    pass"])])
    out: dict[str, Any] = {}
    exec(compile(source, f"<value class {cls_name}>", "exec"), globs, out)
    init = out["__init__"]
    init.__qualname__ = f"{cls_name}.__init__"
    return init


class _AttrsView:
    """``__attrs_attrs__`` of a value class, made by attrs from the same declaration
    when first asked (then stored on the class in its place)."""

    def __get__(self, inst: object, owner: type) -> Any:
        import attrs

        fields: tuple[_Field, ...] = owner.__dict__["__value_fields__"]
        body: dict[str, Any] = {"__annotations__": {f.name: "Any" for f in fields}}
        for f in fields:
            body[f.name] = attrs.field(
                default=attrs.NOTHING if f.default is NOTHING else f.default,
                factory=f.factory, eq=f.eq, repr=f.repr, init=f.init, kw_only=f.kw_only,
                converter=f.converter,
            ) if f.factory is None else attrs.field(
                factory=f.factory, eq=f.eq, repr=f.repr, init=f.init, kw_only=f.kw_only,
                converter=f.converter,
            )
        shadow = attrs.define(type(owner.__name__, (), body), slots=False)
        found = shadow.__dict__["__attrs_attrs__"]
        type.__setattr__(owner, "__attrs_attrs__", found)
        return found
