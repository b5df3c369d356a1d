"""YAML configuration → validated :class:`GatewayConfig`.

"Impossible to misconfigure silently": unknown keys are errors (with a "did you mean"),
every problem names the file, line, key, the bad value and what is allowed, and *all*
problems are reported at once. Which keys exist, how each is checked and what it defaults
to come from the model's dataclasses (:mod:`gateway.config.fields`): nothing is listed
twice, and a key the model lacks cannot be dropped silently. Checking is pure: no DNS, no
sockets (names are resolved when the gateway starts). ruamel.yaml's round-trip loader
gives us line numbers (``.lc``) and is the same library the partner editor uses to keep
comments, so what the editor writes is read back under the same YAML 1.2 rules. Relative
paths are resolved against the configuration file's directory, as Prosody and ejabberd do.

Cost: validation is linear in the number of partners (one dict for domain ownership,
:func:`negotiate` is cached); the YAML parse itself dominates (ruamel.yaml is pure Python:
about 0.6 s per 1,000 partner entries).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from gateway.config.fields import BESIDE, CHECK, READ, Check, Choice, Syntax, Whole, file_key
from gateway.config.model import (
    CertificateFiles,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
)
from gateway.config.values import parse_host_port, parse_nameserver, parse_network
from gateway.domain import DomainError, normalize_domain
from gateway.policy.negotiation import Support

__all__ = [
    "SUPPORT_VALUES",
    "TYPE_VALUES",
    "ConfigError",
    "ConfigProblem",
    "config_warnings",
    "load_config",
    "load_config_text",
]

SUPPORT_VALUES = tuple(s.value for s in Support)
TYPE_VALUES = tuple(t.value for t in PartnerType)

Converter = Callable[[Any, str, "int | None"], Any]


@dataclass(frozen=True, slots=True)
class _Spec:
    """What the file may say for one dataclass: converters by key, the keys it must
    have, and the field each key sets."""

    converters: dict[str, Converter]
    required: tuple[str, ...]
    field_names: dict[str, str]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration, precise enough to fix without guessing.

    ``str()`` reads ``file:line: key.path: message``, e.g.
    ``config/gateway.yaml:42: partners[1].tls: 'requird' is not one of required,
    optional, not-supported``.
    """

    file: str
    line: int | None  # 1-based; None when the problem has no single place
    key_path: str  # e.g. "partners[1].tls"; "" for the document as a whole
    value: object  # the offending value as read (None when there is none)
    message: str  # the whole sentence after the key path
    allowed: tuple[str, ...] = ()  # what would have been accepted, when it is a list

    @property
    def key(self) -> str:
        return self.key_path

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else \
            f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Skip(Exception):
    """Raised by a converter after it recorded a problem."""


@dataclass(frozen=True, slots=True)
class _Located:
    """A normalised domain with where it was written (for ownership messages)."""

    domain: str
    key_path: str
    line: int | None


class _Checker:
    """Walks the round-trip document, converting values and recording problems."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        self.served: list[_Located] = []
        self.partner_domains: list[_Located] = []
        self.per_domain_lines: dict[str, int | None] = {}
        self._specs: dict[type, _Spec] = {}

    def problem(self, line: int | None, key: str, message: str, value: object = None,
                allowed: tuple[str, ...] = ()) -> None:
        self.problems.append(ConfigProblem(self.source, line, key, value, message, allowed))

    # -------------------------------------------------------------- helpers

    @staticmethod
    def key_line(node: Any, key: Any) -> int | None:
        try:
            return int(node.lc.key(key)[0]) + 1
        except (AttributeError, KeyError, TypeError):
            return _line_of(node)

    @staticmethod
    def item_line(node: Any, index: int) -> int | None:
        try:
            return int(node.lc.item(index)[0]) + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return _line_of(node)

    def mapping(self, node: Any, path: str, line: int | None, known: dict[str, Converter],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Validate a mapping against converters; unknown keys and missing ones reported."""
        if node is None:
            node = CommentedMap()
        if not isinstance(node, dict):
            self.problem(line, path, f"must be a mapping of keys, not {_show(node)}", node)
            raise _Skip
        result: dict[str, Any] = {}
        for key, value in node.items():
            key_path = f"{path}.{key}" if path else str(key)
            kline = self.key_line(node, key)
            if key not in known:
                allowed = tuple(sorted(known))
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" — did you mean '{close[0]}'?" if close else ""
                self.problem(kline, key_path, f"unknown key{hint} (allowed: "
                             f"{', '.join(allowed)})", key, allowed)
                continue
            try:
                result[key] = known[key](value, key_path, kline)
            except _Skip:
                continue
        for key in required:
            if key not in node:
                self.problem(line, f"{path}.{key}" if path else key, "is required")
        return result

    # -------------------------------------------------------------- converters

    def string(self, value: Any, path: str, line: int | None) -> str:
        if not isinstance(value, str):
            self.problem(line, path, f"must be text, not {_show(value)}", value)
            raise _Skip
        return str(value)

    def choice(self, allowed: tuple[str, ...]) -> Converter:
        def convert(value: Any, path: str, line: int | None) -> str:
            text = None
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                text = str(value).strip().lower()
            if text not in allowed:
                self.problem(line, path, f"{_show(value)} is not one of {', '.join(allowed)}",
                             value, allowed)
                raise _Skip
            return text
        return convert

    def boolean(self, value: Any, path: str, line: int | None) -> bool:
        if not isinstance(value, bool):
            self.problem(line, path, f"{_show(value)} is not one of true, false", value,
                         ("true", "false"))
            raise _Skip
        return value

    def integer(self, low: int, high: int | None = None) -> Converter:
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"

        def convert(value: Any, path: str, line: int | None) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                    high is not None and value > high):
                self.problem(line, path, f"{_show(value)} is not a whole number {span}", value)
                raise _Skip
            return int(value)
        return convert

    def seconds(self, value: Any, path: str, line: int | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
                or value == float("inf"):
            self.problem(line, path, f"{_show(value)} is not a positive number of seconds",
                         value)
            raise _Skip
        return float(value)

    def path(self, value: Any, path: str, line: int | None) -> Path:
        text = self.string(value, path, line)
        if not text.strip():
            self.problem(line, path, "must name a file, not an empty text", value)
            raise _Skip
        candidate = Path(text).expanduser()
        return Path(os.path.normpath(candidate if candidate.is_absolute()
                                     else self.base_dir / candidate))

    def database_url(self, value: Any, path: str, line: int | None) -> str:
        """``postgresql://…`` (or ``postgres://``), or empty for the SQLite file."""
        text = self.string(value, path, line).strip()
        if text and not text.startswith(("postgresql://", "postgres://")):
            shown = text.split("://", 1)[0] + "://…" if "://" in text else repr(text)
            self.problem(line, path, f"{shown} is not a PostgreSQL URL (postgresql://user:"
                         "password@host:port/dbname); leave it empty to use store.path",
                         None)
            raise _Skip
        return text

    def node_id(self, value: Any, path: str, line: int | None) -> str:
        text = self.string(value, path, line).strip()
        if len(text) > 64 or any(c.isspace() or not c.isprintable() for c in text):
            self.problem(line, path, f"{_show(value)} is not a node name (up to 64 printable "
                         "characters without spaces)", value)
            raise _Skip
        return text

    def optional_path(self, value: Any, path: str, line: int | None) -> Path | None:
        return None if value is None or value == "" else self.path(value, path, line)

    def domain(self, value: Any, path: str, line: int | None) -> str:
        if not isinstance(value, str):
            self.problem(line, path, f"must be a domain name, not {_show(value)}", value)
            raise _Skip
        try:
            return normalize_domain(value)
        except DomainError as exc:
            self.problem(line, path, f"{_show(value)} is not a valid domain: {exc}", value)
            raise _Skip from None

    def located_domains(self, value: Any, path: str, line: int | None) -> list[_Located]:
        """A list of domains (or one domain written alone), each with its own line."""
        if isinstance(value, str):
            return [_Located(self.domain(value, path, line), path, line)]
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list of domains, not {_show(value)}", value)
            raise _Skip
        result = []
        for index, item in enumerate(value):
            item_path, item_line = f"{path}[{index}]", self.item_line(value, index)
            try:
                result.append(_Located(self.domain(item, item_path, item_line), item_path,
                                       item_line))
            except _Skip:
                continue
        return result

    def served_domains(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        located = self.located_domains(value, path, line)
        if not located and not (isinstance(value, list) and value):
            self.problem(line, path, "must name at least one served domain", value)
            raise _Skip
        first: dict[str, _Located] = {}
        for entry in located:
            if entry.domain in first:
                self.problem(entry.line, entry.key_path, f"{entry.domain} is listed twice "
                             f"(also line {first[entry.domain].line})", entry.domain)
            else:
                first[entry.domain] = entry
        self.served = list(first.values())
        return tuple(first)

    def string_list(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list, not {_show(value)}", value)
            raise _Skip
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(self.item_line(value, index), f"{path}[{index}]",
                             f"must be text, not {_show(item)}", item)
                raise _Skip
        return tuple(str(v) for v in value)

    def host_port(self, value: Any, path: str, line: int | None) -> str:
        """Where a service listens (``admin_web.listen``): ``host:port``."""
        text = self.string(value, path, line).strip()
        try:
            parse_host_port(text)
            return text
        except ValueError as exc:
            self.problem(line, path, str(exc), value)
            raise _Skip from None

    def nameservers(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        servers = self.string_list(value, path, line)
        bad = False
        for index, server in enumerate(servers):
            try:
                parse_nameserver(server)
            except ValueError as exc:
                if isinstance(value, list):
                    self.problem(self.item_line(value, index), f"{path}[{index}]", str(exc),
                                 server)
                else:
                    self.problem(line, path, str(exc), server)
                bad = True
        if bad:
            raise _Skip
        return servers

    def networks(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        """IP addresses or CIDR networks (``sip.trusted_sources``), each checked."""
        entries = self.string_list(value, path, line)
        bad = False
        for index, entry in enumerate(entries):
            try:
                parse_network(entry)
            except ValueError as exc:
                where = self.item_line(value, index) if isinstance(value, list) else line
                self.problem(where, f"{path}[{index}]" if isinstance(value, list) else path,
                             str(exc), entry)
                bad = True
        if bad:
            raise _Skip
        return tuple(entry.strip() for entry in entries)

    def names(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        """Certificate names (``sip.trusted_names``): domain names or IP addresses."""
        import ipaddress

        result = []
        for index, entry in enumerate(self.string_list(value, path, line)):
            item_path = f"{path}[{index}]" if isinstance(value, list) else path
            item_line = self.item_line(value, index) if isinstance(value, list) else line
            try:
                result.append(str(ipaddress.ip_address(entry.strip())))
            except ValueError:
                result.append(self.domain(entry, item_path, item_line))
        return tuple(result)

    # -------------------------------------------------------------- from the model

    def spec(self, cls: type) -> _Spec:
        """The keys of dataclass ``cls`` as the file writes them, derived from its fields."""
        known = self._specs.get(cls)
        if known is not None:
            return known
        hints = typing.get_type_hints(cls)
        converters: dict[str, Converter] = {}
        names: dict[str, str] = {}
        required: list[str] = []
        for f in fields(cls):
            if not f.init or not f.metadata.get(READ, True):
                continue
            key = file_key(f)
            converters[key] = self.converter(hints[f.name], f.metadata.get(CHECK),
                                             f"{cls.__name__}.{f.name}")
            names[key] = f.name
            if f.default is MISSING and f.default_factory is MISSING:
                required.append(key)
        known = self._specs[cls] = _Spec(converters, tuple(required), names)
        return known

    def _syntax(self, name: str) -> Converter:
        """The converter a :class:`Syntax` check names (a table, not an attribute lookup:
        a misspelt name fails here, listing the known ones)."""
        converters: dict[str, Converter] = {
            "served_domains": self.served_domains, "domain": self.domain,
            "located_domains": self.located_domains, "nameservers": self.nameservers,
            "networks": self.networks, "names": self.names,
            "database_url": self.database_url, "node_id": self.node_id,
            "listen": self.listen, "per_domain": self.per_domain, "partners": self.partners,
            "host_port": self.host_port}
        try:
            return converters[name]
        except KeyError:
            raise TypeError(f"unknown syntax {name!r} (known: {', '.join(converters)})") \
                from None

    def converter(self, hint: Any, check: Check | None, where: str) -> Converter:
        """How a value of type ``hint`` is read: the field's own check if it declares
        one, else the one its type implies (see :mod:`gateway.config.fields`)."""
        if isinstance(check, Whole):
            return self.integer(check.low, check.high)
        if isinstance(check, Choice):
            return self.choice(check.values)
        if isinstance(check, Syntax):
            return self._syntax(check.name)
        if check is not None:
            raise TypeError(f"{where}: unknown check {check!r}")
        args = typing.get_args(hint)
        if hint is bool:
            return self.boolean
        if hint is int:
            return self.integer(1)
        if hint is float:
            return self.seconds
        if hint is str:
            return self.string
        if hint is Path:
            return self.path
        if isinstance(hint, types.UnionType) and set(args) == {Path, type(None)}:
            return self.optional_path
        if typing.get_origin(hint) is tuple and args == (str, ...):
            return self.string_list
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self.member(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.section(hint)
        raise TypeError(f"{where}: no check follows from the type {hint}; declare one "
                        "with gateway.config.fields.setting(check=...)")

    def member(self, kind: type[enum.Enum]) -> Converter:
        """One of an enumeration's values (``type: federated``)."""
        choose = self.choice(tuple(str(member.value) for member in kind))

        def convert(value: Any, path: str, line: int | None) -> Any:
            return kind(choose(value, path, line))
        return convert

    def section(self, cls: type) -> Converter:
        """A mapping read into dataclass ``cls``: every key checked, unknown keys
        reported, what is not written left to the model's defaults."""
        def convert(value: Any, path: str, line: int | None) -> Any:
            spec = self.spec(cls)
            values = self.mapping(value, path, line, spec.converters, spec.required)
            if any(key not in values for key in spec.required):
                raise _Skip
            return cls(**self.completed(cls, {spec.field_names[key]: item
                                              for key, item in values.items()}))
        return convert

    def completed(self, cls: type, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (by field name) with what the file left out: sections built from
        their defaults, and default paths made absolute. A relative default path is
        relative to the directory above the configuration file (``../certs/…``), or to the
        file's own directory for a field declared ``beside``."""
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in values or not f.init or not f.metadata.get(READ, True):
                continue
            hint = hints[f.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint) \
                    and f.metadata.get(CHECK) is None:
                values[f.name] = self.section(hint)(None, f.name, None)
            elif isinstance(f.default, Path) and not f.default.is_absolute():
                anchor = self.base_dir if f.metadata.get(BESIDE) else self.base_dir / ".."
                values[f.name] = Path(os.path.normpath(anchor / f.default))
        return values

    def listen(self, value: Any, path: str, line: int | None) -> tuple[ListenAddress, ...]:
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list of {{host, port}}, not {_show(value)}",
                         value)
            raise _Skip
        if not value:
            self.problem(line, path, "must list at least one address to accept "
                         "connections on", value)
            raise _Skip
        convert = self.section(ListenAddress)
        result = []
        for index, item in enumerate(value):
            try:
                result.append(convert(item, f"{path}[{index}]", self.item_line(value, index)))
            except _Skip:
                continue
        return tuple(result)

    def per_domain(self, value: Any, path: str, line: int | None) -> dict[str, CertificateFiles]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(line, path, f"must map domains to {{certificate, key}}, not "
                         f"{_show(value)}", value)
            raise _Skip
        convert = self.section(CertificateFiles)
        result = {}
        for key, item in value.items():
            kline = self.key_line(value, key)
            try:
                domain = self.domain(key, f"{path}.{key}", kline)
                result[domain] = convert(item, f"{path}.{key}", kline)
            except _Skip:
                continue
            self.per_domain_lines[domain] = kline
        return result

    def partners(self, value: Any, path: str, line: int | None) -> tuple[PartnerPolicy, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list of partner entries, not {_show(value)}",
                         value)
            raise _Skip
        spec = self.spec(PartnerPolicy)
        result: list[PartnerPolicy] = []
        owner: dict[str, tuple[int, str, _Located]] = {}  # domain → (index, partner, where)
        for index, item in enumerate(value):
            item_path, item_line = f"{path}[{index}]", self.item_line(value, index)
            try:
                entry = self.mapping(item, item_path, item_line, spec.converters, spec.required)
            except _Skip:
                continue
            located = list(entry.get("additional_domains", ()))
            if "domain" in entry:
                located.insert(0, _Located(entry["domain"], f"{item_path}.domain",
                                           self.key_line(item, "domain")))
            name = entry.get("domain", item_path)
            clash = self._claim(owner, index, located, name)
            if "domain" not in entry or "type" not in entry:
                continue
            written = {spec.field_names[key]: item for key, item in entry.items()}
            written["additional_domains"] = tuple(d.domain for d in located[1:])
            partner = PartnerPolicy(**written)  # what is not written: the model's defaults
            outcome = partner.negotiation
            if not outcome.valid:
                shown = (f"tls={partner.tls}, sasl={partner.sasl}, "
                         f"dialback={str(partner.dialback).lower()}")
                self.problem(item_line, item_path, f"{shown} is not a valid combination: "
                             f"{outcome.error}", shown)
                continue
            if clash:
                continue
            result.append(partner)
        self.partner_domains = [where for _, _, where in owner.values()]
        return tuple(result)

    def _claim(self, owner: dict[str, tuple[int, str, _Located]], index: int,
               located: list[_Located], name: str) -> bool:
        """Record which partner each domain belongs to; report a second owner."""
        clash = False
        for where in located:
            if where.domain not in owner:
                owner[where.domain] = (index, name, where)
                continue
            first_index, first_name, first = owner[where.domain]
            if first_index == index:
                message = f"{where.domain} is listed twice in this partner (also line " \
                          f"{first.line})"
            else:
                message = (f"{where.domain} already belongs to partner {first_name} "
                           f"(partners[{first_index}], line {first.line}); a domain may belong "
                           "to one partner only")
            self.problem(where.line, where.key_path, message, where.domain)
            clash = True
        return clash

    def cross_checks(self, values: dict[str, Any]) -> None:
        """Rules that relate sections to each other (run after every section was read)."""
        served = {where.domain: where for where in self.served}
        for where in self.partner_domains:
            if where.domain in served:
                self.problem(where.line, where.key_path, f"{where.domain} is served by this "
                             f"gateway (domains, line {served[where.domain].line}) and cannot "
                             "be a partner", where.domain)
        sip = values.get("sip")
        if sip is not None and sip.client_key is not None and sip.client_certificate is None:
            self.problem(None, "sip.client_key", "is set without sip.client_certificate; set "
                         "both (or neither, to present tls.certificate)")
        cluster = values.get("cluster")
        if cluster is not None and cluster.lease < 2 * cluster.heartbeat_interval:
            self.problem(None, "cluster.lease", f"{cluster.lease:g} s is shorter than two "
                         f"heartbeats ({cluster.heartbeat_interval:g} s each): one late "
                         "heartbeat would declare a live node dead", cluster.lease)
        web = values.get("admin_web")
        if web is not None and (web.certificate is None) != (web.key is None):
            missing = "key" if web.key is None else "certificate"
            self.problem(None, f"admin_web.{missing}", "is required with the other one: set "
                         "both to serve the console over HTTPS, or neither for plain HTTP")
        tls = values.get("tls")
        if tls is not None and served:
            for domain in tls.per_domain:
                if domain not in served:
                    line = self.per_domain_lines.get(domain)
                    self.problem(line, f"tls.per_domain.{domain}", f"{domain} is not a served "
                                 f"domain, so this certificate would never be used (served: "
                                 f"{', '.join(served)})", domain, tuple(served))


def _line_of(node: Any) -> int | None:
    try:
        return int(node.lc.line) + 1
    except (AttributeError, TypeError):
        return None


def _show(value: Any) -> str:
    if isinstance(value, CommentedMap | dict):
        return "a mapping"
    if isinstance(value, CommentedSeq | list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(str(value)) if isinstance(value, str) else str(value)


def _parse(text: str, name: str) -> Any:
    """The round-trip document, or a :class:`ConfigError` saying where the YAML breaks."""
    try:
        return YAML(typ="rt").load(text)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        first = exc.context_mark.line + 1 if exc.context_mark else None
        quoted = str(exc.problem).split('"')
        key = quoted[1] if len(quoted) > 2 else "?"
        raise ConfigError([ConfigProblem(name, line, "", key, f"duplicate key '{key}' (first "
                                         f"written on line {first}); write each key once")]) \
            from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([ConfigProblem(name, line, "", None,
                                         f"malformed YAML: {exc.problem}{context}")]) from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        raise ConfigError([ConfigProblem(name, line, "", char,
                                         f"malformed YAML: character U+{ord(char[:1] or '?'):04X}"
                                         " is not allowed in a YAML file")]) from None
    except YAMLError as exc:  # anything else ruamel refuses, still without a traceback
        raise ConfigError([ConfigProblem(name, None, "", None, f"malformed YAML: {exc}")]) \
            from None


def load_config_text(text: str, source: Path | None = None,
                     base_dir: Path | None = None) -> GatewayConfig:
    """Validate configuration text; ``source`` names it in messages and in the result.

    ``base_dir`` anchors relative paths (default: the source's directory, else the
    current directory). Raises :class:`ConfigError` listing every problem found.
    """
    name = str(source) if source else "<config>"
    base = base_dir or (source.parent if source else Path.cwd())
    checker = _Checker(name, base.resolve() if not base.is_absolute() else base)
    document = _parse(text, name)
    if document is None:
        document = CommentedMap()
    spec = checker.spec(GatewayConfig)
    try:
        values = checker.mapping(document, "", 1, spec.converters, spec.required)
    except _Skip:
        raise ConfigError(checker.problems) from None
    values = {spec.field_names[key]: value for key, value in values.items()}
    checker.cross_checks(values)
    if checker.problems:
        raise ConfigError(sorted(checker.problems, key=lambda p: p.line or 0))
    return GatewayConfig(source=source, **checker.completed(GatewayConfig, values))


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a configuration file (relative paths: from its directory)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigProblem(str(path), line, "", None,
                                         f"not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                                         f"offset {exc.start})")]) from None
    return load_config_text(text, source=path, base_dir=path.parent.resolve())


def config_warnings(config: GatewayConfig) -> list[str]:
    """Things that work but deserve the admin's attention (``check config``)."""
    warnings = []
    for partner in config.partners:
        for text in partner.negotiation.warnings:
            warnings.append(f"partner {partner.primary_domain}: {text}")
    if not config.dialback.secret and config.store.url:
        # A lone node verifies its own keys whatever the secret; only nodes sharing a store
        # (the same domains) must agree on it.
        warnings.append("dialback.secret is empty while store.url makes this node one of "
                        "several: each node makes a random secret at start, so they cannot "
                        "verify each other's dialback keys; give every node the same secret")
    if not config.tls.use_system_cas and config.tls.ca_file is None:
        warnings.append("tls.use_system_cas is false and no tls.ca_file is set: no peer "
                        "certificate can verify, SASL EXTERNAL will never be used")
    files = [("tls.certificate", config.tls.certificate), ("tls.key", config.tls.key)]
    for domain, pair in config.tls.per_domain.items():
        files += [(f"tls.per_domain.{domain}.certificate", pair.certificate),
                  (f"tls.per_domain.{domain}.key", pair.key)]
    for label, path in files:
        if not Path(path).is_file():
            warnings.append(f"{label} {path} does not exist: STARTTLS will not be offered "
                            "(make certs creates development certificates)")
    if config.tls.ca_file is not None and not Path(config.tls.ca_file).is_file():
        warnings.append(f"tls.ca_file {config.tls.ca_file} does not exist")
    warnings.extend(_sip_trust_warnings(config))
    if config.metrics.enabled and config.metrics.host not in ("127.0.0.1", "::1", "localhost"):
        warnings.append(f"metrics.host {config.metrics.host} exposes the metrics endpoint "
                        "beyond this host (it has no authentication)")
    warnings.extend(_admin_web_warnings(config))
    return warnings


def _admin_web_warnings(config: GatewayConfig) -> list[str]:
    """The console changes partners and drains nodes: who can reach it matters."""
    web = config.admin_web
    if not web.enabled:
        return []
    warnings = []
    host, port = web.address
    if not _is_loopback(host):
        https = web.certificate is not None
        warnings.append(f"admin_web.listen {host}:{port} makes the admin console reachable "
                        "beyond this host" + ("; restrict who can reach it (firewall)" if https
                                              else ": without admin_web.certificate and key, "
                                              "passwords and session cookies cross the network "
                                              "in clear text"))
    if not Path(web.accounts).is_file():
        warnings.append(f"admin_web.accounts {web.accounts} does not exist: nobody can log in "
                        "to the console (create an account: xmpp-gateway admin-user add NAME)")
    return warnings


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: assume it may resolve beyond this host


def _sip_trust_warnings(config: GatewayConfig) -> list[str]:
    """The SIP side speaks for local users with our domain's S2S authority: where it trusts
    more than it can check, say so."""
    sip = config.sip
    if sip.backend != "sip":
        return []
    warnings = []
    mutual_tls = sip.transport == "tls" and sip.require_client_certificate
    if not _is_loopback(sip.local_host) and not sip.trusted_sources and not mutual_tls:
        warnings.append(
            f"sip.local_host {sip.local_host} is reachable beyond this host, and SIP requests "
            f"are trusted on their source address alone (the addresses of sip.proxy_host "
            f"{sip.proxy_host}), which {sip.transport.upper()} does not prove"
            + (" (a UDP source is trivially forged)" if sip.transport == "udp" else "")
            + ": set sip.transport tls with sip.require_client_certificate true, or list "
            "the proxy's addresses in sip.trusted_sources and filter spoofed sources at the "
            "network edge (docs/sip.md, Security)")
    if sip.require_client_certificate and sip.transport != "tls":
        warnings.append(f"sip.require_client_certificate has no effect with sip.transport "
                        f"{sip.transport} (it applies to tls only)")
    if sip.trust_asserted_identity:
        warnings.append("sip.trust_asserted_identity is true: the proxy must remove "
                        "P-Asserted-Identity from its users' requests and insert its own after "
                        "authenticating them (RFC 3325 §5), or any user can send as any other")
    return warnings
