"""Sink registry: config ``type`` → sink class, from the ``instantly_audit.sinks`` entry points.

``pipeline`` never imports a connector by name: a package declares
``[project.entry-points."instantly_audit.sinks"] my_sink = "my_package.my_sink:MySink"``
and the registry loads the class the first time a config names it. Tests (and embedding
programs) add classes with :func:`register_sink`; those take precedence over entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, cast

from pipeline.config.base import unresolved_paths, validate_block
from pipeline.config.transport import warn_insecure
from pipeline.delivery.base import Sink, SinkConfig
from pipeline.errors import ConfigError

GROUP = "instantly_audit.sinks"

_extra: dict[str, type[Any]] = {}
_loaded: dict[str, type[Any]] = {}


def register_sink(type_name: str, cls: type[Any]) -> None:
    """Make ``cls`` available as sink type ``type_name`` (overrides an entry point)."""
    _check_class(type_name, cls)
    _extra[type_name] = cls


def unregister_sink(type_name: str) -> None:
    """Forget a class added with :func:`register_sink` (no error if absent)."""
    _extra.pop(type_name, None)


def sink_types() -> list[str]:
    """Every known sink type, sorted (entry points are listed, not imported)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(_extra))


def sink_class(type_name: str, where: str = "sinks") -> type[Any]:
    """The class registered for ``type_name``.

    Raises:
        ConfigError: the type is unknown (the message lists the known ones) or its entry
            point cannot be imported.
    """
    if type_name in _extra:
        return _extra[type_name]
    if type_name in _loaded:
        return _loaded[type_name]
    found = [ep for ep in entry_points(group=GROUP) if ep.name == type_name]
    if not found:
        known = ", ".join(sink_types()) or "none installed"
        raise ConfigError(f"{where}.type: unknown sink type {type_name!r} (known: {known})")
    try:
        cls = found[0].load()
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{where}.type: sink type {type_name!r} is declared by {found[0].value} but cannot be "
            f"loaded ({type(err).__name__}: {err})"
        ) from None
    _check_class(type_name, cls)
    _loaded[type_name] = cls
    return cast(type[Any], cls)


def validate_sink(sink_id: str, block: Mapping[str, Any]) -> tuple[type[Any], SinkConfig]:
    """Find the class for ``block['type']`` and validate ``block`` with its ``Config``.

    Raises:
        ConfigError: no/unknown type, or the block is invalid (errors name ``sinks.<id>.<key>``).
    """
    where = f"sinks.{sink_id}"
    type_name = block.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"{where}.type: required key is missing (known types: {', '.join(sink_types())})")
    cls = sink_class(type_name, where)
    config = validate_block(cls.Config, block, where)
    assert isinstance(config, SinkConfig)
    return cls, config


def build_sink(sink_id: str, block: SinkConfig | Mapping[str, Any]) -> Sink:
    """Build (not yet open) the sink ``sink_id`` from its validated config (or a raw block).

    Raises:
        ConfigError: see :func:`validate_sink`; or a value of the block is a reference that was not
            read (``config validate --no-environment``): no placeholder ever reaches a destination.
    """
    if isinstance(block, SinkConfig):
        cls, config = sink_class(block.type, f"sinks.{sink_id}"), block
    else:
        cls, config = validate_sink(sink_id, block)
    unread = unresolved_paths(config, f"sinks.{sink_id}")
    if unread:
        raise ConfigError("\n".join(f"{p}: not read (a ${{...}} reference or *_file this command did not resolve): "
                                     "the sink cannot be built without it" for p in unread))  # fmt: skip
    insecure = getattr(config, "insecure_transport", None)
    if callable(insecure):
        warn_insecure(f"sinks.{sink_id}", insecure())
    sink = cls(sink_id, config)
    return cast(Sink, sink)


def _check_class(type_name: str, cls: Any) -> None:
    config = getattr(cls, "Config", None)
    if not isinstance(cls, type) or not (isinstance(config, type) and issubclass(config, SinkConfig)):
        raise ConfigError(f"sink type {type_name!r}: {cls!r} is not a sink class (it needs a SinkConfig 'Config')")
    for name in ("send", "healthcheck", "__aenter__", "__aexit__"):
        if not callable(getattr(cls, name, None)):
            raise ConfigError(f"sink type {type_name!r}: {cls.__name__} lacks {name}()")
