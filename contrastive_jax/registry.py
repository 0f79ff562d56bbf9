"""A registry: plug-ins (methods, modalities, encoders) found by the name a config gives.

  METHODS = Registry('method', 'config.method')
  METHODS.register(SimCLR)                      # the object's `name` attribute
  METHODS.get(config.method)                    # unknown name -> ValueError with the choices

Registering from outside the package (a test, a user's module imported before
the binary runs) needs no edit of the package; re-registering a name that is
taken is an error unless `replace=True`, so two plug-ins never shadow each
other silently.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """Name -> plug-in, in registration order."""

  def __init__(self, kind: str, config_key: str):
    self.kind, self.config_key = kind, config_key
    self._entries: dict[str, T] = {}

  def register(self, entry: T, *, name: str | None = None, replace: bool = False) -> T:
    """Adds `entry` under `name` (default: entry.name); returns it, so it can decorate."""
    name = name or getattr(entry, 'name', None)
    if not name:
      raise ValueError(f'A {self.kind} needs a name: give it a `name` attribute or pass '
                       'name=... to register().')
    if name in self._entries and not replace:
      raise ValueError(f'A {self.kind} named {name!r} is already registered; pick another '
                       'name or pass replace=True.')
    self._entries[name] = entry
    return entry

  def unregister(self, name: str) -> None:
    self._entries.pop(name, None)

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(f'{self.config_key}={name!r} is not valid; choose one of '
                       f'{self.names()} (e.g. --{self.config_key}={self.names()[0]}).')
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: Any) -> bool:
    return name in self._entries
