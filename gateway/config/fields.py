"""How each configuration field is read from the file, declared beside the field.

The model (:mod:`gateway.config.model`) is the one place a setting is defined: its name,
type, default and — here — how the loader checks it. The loader derives everything it
reads from the dataclasses, so adding a setting is one line in the model:

* a plain default (``retries: int = 3``) is checked by its type: ``bool`` true/false,
  ``int`` a whole number of at least 1, ``float`` a positive number of seconds, ``str``
  text, ``Path`` a file name (relative to the configuration file), ``Path | None`` the
  same or empty, ``tuple[str, ...]`` a list of texts, an ``StrEnum`` one of its values, a
  dataclass a section of its own;
* :func:`setting` adds a finer check (a range, a list of choices, a syntax such as
  network addresses) or the key's name in the file when it differs from the field's.

Pure declarations: nothing here reads files, resolves names or imports the loader.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Final

CHECK: Final = "check"  # field metadata: the Check that validates the value
KEY: Final = "key"  # field metadata: the key in the file, when not the field's name
READ: Final = "read"  # field metadata: False for fields the file does not set
BESIDE: Final = "beside"  # field metadata: a default path beside the file, not above it


class Check:
    """Base of the checks a field can declare."""


@dataclass(frozen=True, slots=True)
class Whole(Check):
    """A whole number from ``low`` to ``high`` (no upper limit when None)."""

    low: int
    high: int | None = None


@dataclass(frozen=True, slots=True)
class Choice(Check):
    """One of ``values`` (compared case-insensitively, stored lower case)."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Syntax(Check):
    """A value with a syntax of its own, checked by the loader's converter ``name``:

    ``served_domains``, ``domain``, ``located_domains`` (a list of domains, each with its
    line), ``nameservers``, ``networks`` (IP addresses / CIDR networks), ``names``
    (certificate names: domains or IP addresses), ``database_url``, ``node_id``,
    ``listen``, ``per_domain``, ``partners``, ``host_port`` (where a service listens)."""

    name: str


PORT: Final = Whole(1, 65535)


def setting(default: Any = MISSING, check: Check | None = None, *,
            factory: Any = MISSING, key: str | None = None, read: bool = True,
            beside: bool = False) -> Any:
    """A dataclass field with how the loader reads it (see the module docstring).

    ``default`` or ``factory`` as for :func:`dataclasses.field`; ``check`` refines the
    check implied by the type; ``key`` names the field in the file; ``read=False`` marks a
    field the file does not set (it is not a key); ``beside=True`` anchors a relative
    default path in the configuration file's own directory instead of the one above it
    (a file that belongs with the configuration, wherever that is installed)."""
    metadata: dict[str, Any] = {READ: read}
    if beside:
        metadata[BESIDE] = True
    if check is not None:
        metadata[CHECK] = check
    if key is not None:
        metadata[KEY] = key
    return field(default=default, default_factory=factory, metadata=metadata)


def file_key(item: Field[Any]) -> str:
    """The key that sets this field in the file."""
    key: str = item.metadata.get(KEY, item.name)
    return key


def file_keys(cls: type) -> tuple[str, ...]:
    """The keys a section of type ``cls`` may have, in the model's order."""
    return tuple(file_key(item) for item in fields(cls)
                 if item.init and item.metadata.get(READ, True))
