"""Comment-preserving, atomic edits of the partner list (``xmpp-gateway partner …``).

The whole edited document is validated with the loader *before* anything is written; an
invalid result raises :class:`ConfigError` and the file stays byte-for-byte untouched.
Writes go to a temporary file in the same directory, are fsynced and renamed over the
original (keeping its mode), so a crash never leaves half a configuration.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from gateway.config.loader import ConfigError, ConfigProblem, load_config_text
from gateway.config.model import GatewayConfig
from gateway.domain import DomainError, normalize_domain


class PartnerNotFound(LookupError):
    pass


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _find(partners: CommentedSeq, domain: str) -> int | None:
    for index, entry in enumerate(partners):
        if not isinstance(entry, dict):
            continue
        names = [entry.get("domain", ""), *(entry.get("additional_domains") or [])]
        for name in names:
            try:
                if normalize_domain(str(name)) == domain:
                    return index
            except DomainError:
                continue
    return None


def edit_partners(path: Path, change: Callable[[CommentedSeq], None]) -> GatewayConfig:
    """Apply ``change`` to the partner list, validate, write atomically; return the result."""
    path = Path(path)
    original = path.read_text(encoding="utf-8")
    yaml = _yaml()
    document = yaml.load(original)
    if not isinstance(document, CommentedMap):
        raise ConfigError([ConfigProblem(str(path), 1, "", "the file is not a YAML mapping")])
    partners = document.get("partners")
    if partners is None:
        partners = CommentedSeq()
        document["partners"] = partners
    change(partners)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    config = load_config_text(text, source=path, base_dir=path.parent.resolve())
    _atomic_write(path, text)
    return config


def _atomic_write(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_partner(path: Path, entry: dict[str, Any]) -> GatewayConfig:
    domain = normalize_domain(entry["domain"])

    def change(partners: CommentedSeq) -> None:
        if _find(partners, domain) is not None:
            raise ConfigError([ConfigProblem(str(path), None, "partners",
                                             f"{domain} is already a partner (use partner set)")])
        item = CommentedMap()
        for key in ("domain", "type", "tls", "sasl", "dialback", "additional_domains",
                    "description"):
            if key in entry and entry[key] is not None:
                item[key] = entry[key]
        partners.append(item)

    return edit_partners(path, change)


def set_partner(path: Path, domain: str, updates: dict[str, Any],
                add_domains: list[str], remove_domains: list[str]) -> GatewayConfig:
    domain = normalize_domain(domain)

    def change(partners: CommentedSeq) -> None:
        index = _find(partners, domain)
        if index is None:
            raise PartnerNotFound(domain)
        item = partners[index]
        for key, value in updates.items():
            if value is not None:
                item[key] = value
        if add_domains or remove_domains:
            current = [str(d) for d in (item.get("additional_domains") or [])]
            removing = {normalize_domain(d) for d in remove_domains}
            kept = [d for d in current if normalize_domain(d) not in removing]
            kept += [d for d in add_domains if d not in kept]
            if kept:
                item["additional_domains"] = kept
            else:
                item.pop("additional_domains", None)

    return edit_partners(path, change)


def remove_partner(path: Path, domain: str) -> GatewayConfig:
    domain = normalize_domain(domain)

    def change(partners: CommentedSeq) -> None:
        index = _find(partners, domain)
        if index is None:
            raise PartnerNotFound(domain)
        del partners[index]

    return edit_partners(path, change)
