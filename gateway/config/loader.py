"""YAML configuration → validated :class:`GatewayConfig`.

"Impossible to misconfigure silently": unknown keys are errors (with a "did you mean"),
every problem names the file, line, key, the bad value and what is allowed, and *all*
problems are reported at once. ruamel.yaml's round-trip loader gives us line numbers and
is the same library the partner editor uses to keep comments. Relative paths are resolved
against the configuration file's directory, as Prosody and ejabberd do.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from gateway.config.model import (
    CertificateFiles,
    DialbackSettings,
    DnsSettings,
    FederationSettings,
    GatewayConfig,
    Limits,
    ListenAddress,
    LoggingSettings,
    MetricsSettings,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
    TlsSettings,
)
from gateway.domain import DomainError, normalize_domain
from gateway.policy.negotiation import Support, negotiate

SUPPORT_VALUES = tuple(s.value for s in Support)
TYPE_VALUES = tuple(t.value for t in PartnerType)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int | None  # 1-based
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Skip(Exception):
    """Raised by a converter after it recorded a problem."""


class _Checker:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []

    def problem(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.source, line, key, message))

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

    def mapping(self, node: Any, path: str, line: int | None,
                known: dict[str, Callable[[Any, str, int | None], Any]],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Validate a mapping against converters; unknown keys and missing ones reported."""
        if node is None:
            node = CommentedMap()
        if not isinstance(node, dict):
            self.problem(line, path, f"must be a mapping of keys, not {_show(node)}")
            raise _Skip
        result: dict[str, Any] = {}
        for key, value in node.items():
            key_path = f"{path}.{key}" if path else str(key)
            kline = self.key_line(node, key)
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f" — did you mean '{close[0]}'?" if close else ""
                self.problem(kline, key_path, f"unknown key{hint} (allowed: "
                             f"{', '.join(sorted(known))})")
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
            self.problem(line, path, f"must be text, not {_show(value)}")
            raise _Skip
        return str(value)

    def choice(self, allowed: tuple[str, ...]) -> Callable[[Any, str, int | None], str]:
        def convert(value: Any, path: str, line: int | None) -> str:
            text = None
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                text = str(value).strip().lower()
            if text not in allowed:
                self.problem(line, path, f"{_show(value)} is not one of {', '.join(allowed)}")
                raise _Skip
            return text
        return convert

    def boolean(self, value: Any, path: str, line: int | None) -> bool:
        if not isinstance(value, bool):
            self.problem(line, path, f"{_show(value)} is not one of true, false")
            raise _Skip
        return value

    def integer(self, low: int, high: int) -> Callable[[Any, str, int | None], int]:
        def convert(value: Any, path: str, line: int | None) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                self.problem(line, path, f"{_show(value)} is not a whole number from "
                             f"{low} to {high}")
                raise _Skip
            return int(value)
        return convert

    def seconds(self, value: Any, path: str, line: int | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.problem(line, path, f"{_show(value)} is not a positive number of seconds")
            raise _Skip
        return float(value)

    def path(self, value: Any, path: str, line: int | None) -> Path:
        text = self.string(value, path, line)
        candidate = Path(text).expanduser()
        return Path(os.path.normpath(candidate if candidate.is_absolute()
                                     else self.base_dir / candidate))

    def optional_path(self, value: Any, path: str, line: int | None) -> Path | None:
        return None if value is None or value == "" else self.path(value, path, line)

    def domain(self, value: Any, path: str, line: int | None) -> str:
        text = self.string(value, path, line)
        try:
            return normalize_domain(text)
        except DomainError as exc:
            self.problem(line, path, f"{_show(value)} is not a valid domain: {exc}")
            raise _Skip from None

    def domain_list(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list of domains, not {_show(value)}")
            raise _Skip
        result = []
        for index, item in enumerate(value):
            try:
                result.append(self.domain(item, f"{path}[{index}]", self.item_line(value, index)))
            except _Skip:
                continue
        return tuple(result)

    def string_list(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list, not {_show(value)}")
            raise _Skip
        return tuple(str(v) for v in value)

    def nameservers(self, value: Any, path: str, line: int | None) -> tuple[str, ...]:
        from gateway.dns.resolver import parse_nameserver

        servers = self.string_list(value, path, line)
        for server in servers:
            try:
                parse_nameserver(server)
            except ValueError as exc:
                self.problem(line, path, str(exc))
                raise _Skip from None
        return servers

    # -------------------------------------------------------------- sections

    def section(self, cls: type, spec: dict[str, Callable[[Any, str, int | None], Any]],
                required: tuple[str, ...] = ()) -> Callable[[Any, str, int | None], Any]:
        def convert(value: Any, path: str, line: int | None) -> Any:
            values = self.mapping(value, path, line, spec, required)
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in names})
        return convert

    def listen(self, value: Any, path: str, line: int | None) -> tuple[ListenAddress, ...]:
        if not isinstance(value, list) or not value:
            self.problem(line, path, f"must be a non-empty list of {{host, port}}, not "
                         f"{_show(value)}")
            raise _Skip
        convert = self.section(ListenAddress, {
            "host": self.string, "port": self.integer(1, 65535), "direct_tls": self.boolean})
        result = []
        for index, item in enumerate(value):
            try:
                result.append(convert(item, f"{path}[{index}]", self.item_line(value, index)))
            except _Skip:
                continue
        return tuple(result)

    def per_domain(self, value: Any, path: str, line: int | None) -> dict[str, CertificateFiles]:
        if not isinstance(value, dict):
            self.problem(line, path, f"must map domains to {{certificate, key}}, not "
                         f"{_show(value)}")
            raise _Skip
        convert = self.section(CertificateFiles, {"certificate": self.path, "key": self.path},
                               required=("certificate", "key"))
        result = {}
        for key, item in value.items():
            kline = self.key_line(value, key)
            try:
                result[self.domain(key, f"{path}.{key}", kline)] = convert(
                    item, f"{path}.{key}", kline)
            except _Skip:
                continue
        return result

    def partners(self, value: Any, path: str, line: int | None) -> tuple[PartnerPolicy, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(line, path, f"must be a list of partner entries, not {_show(value)}")
            raise _Skip
        spec = {
            "domain": self.domain, "type": self.choice(TYPE_VALUES),
            "tls": self.choice(SUPPORT_VALUES), "sasl": self.choice(SUPPORT_VALUES),
            "dialback": self.boolean, "additional_domains": self.domain_list,
            "description": self.string,
        }
        result: list[PartnerPolicy] = []
        owner: dict[str, tuple[str, int | None]] = {}
        for index, item in enumerate(value):
            item_path, item_line = f"{path}[{index}]", self.item_line(value, index)
            try:
                entry = self.mapping(item, item_path, item_line, spec, required=("domain", "type"))
            except _Skip:
                continue
            if "domain" not in entry or "type" not in entry:
                continue
            tls = Support(entry.get("tls", "optional"))
            sasl = Support(entry.get("sasl", "optional"))
            dialback = entry.get("dialback", True)
            outcome = negotiate(tls, sasl, dialback)
            if not outcome.valid:
                self.problem(item_line, item_path, f"tls={tls}, sasl={sasl}, dialback="
                             f"{str(dialback).lower()} is not a valid combination: "
                             f"{outcome.error}")
                continue
            policy = PartnerPolicy(entry["domain"], PartnerType(entry["type"]), tls, sasl,
                                   dialback, tuple(entry.get("additional_domains", ())),
                                   entry.get("description", ""))
            clash = False
            for domain in policy.domains:
                if domain in owner:
                    first, first_line = owner[domain]
                    self.problem(item_line, item_path, f"domain {domain} already belongs to "
                                 f"partner {first} (line {first_line}); a domain may belong "
                                 "to one partner only")
                    clash = True
                else:
                    owner[domain] = (policy.primary_domain, item_line)
            if not clash:
                result.append(policy)
        return tuple(result)


def _line_of(node: Any) -> int | None:
    try:
        return int(node.lc.line) + 1
    except AttributeError:
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


def _top_level_spec(c: _Checker) -> dict[str, Callable[[Any, str, int | None], Any]]:
    limits_spec: dict[str, Callable[[Any, str, int | None], Any]] = {}
    for f in fields(Limits):
        limits_spec[f.name] = c.seconds if isinstance(f.default, float) else c.integer(
            0 if f.name == "inbound_bytes_per_second" else 1, 1 << 40)
    return {
        "domains": c.domain_list,
        "listen": c.listen,
        "tls": c.section(TlsSettings, {
            "certificate": c.path, "key": c.path, "ca_file": c.optional_path,
            "use_system_cas": c.boolean, "min_version": c.choice(("1.2", "1.3")),
            "per_domain": c.per_domain}),
        "dialback": c.section(DialbackSettings, {"secret": c.string}),
        "dns": c.section(DnsSettings, {"nameservers": c.nameservers, "timeout": c.seconds,
                                       "direct_tls": c.boolean}),
        "store": c.section(StoreSettings, {"path": c.path}),
        "sip": c.section(SipSettings, {
            "backend": c.choice(("development", "sip")), "proxy_host": c.string,
            "proxy_port": c.integer(1, 65535), "transport": c.choice(("udp", "tcp", "tls")),
            "local_host": c.string, "local_port": c.integer(1, 65535)}),
        "logging": c.section(LoggingSettings, {
            "level": c.choice(("debug", "info", "warning", "error")),
            "format": c.choice(("text", "json")), "file": c.optional_path}),
        "limits": c.section(Limits, limits_spec),
        "federation": c.section(FederationSettings, {
            "allow_unlisted": c.boolean, "users_enabled_by_default": c.boolean}),
        "metrics": c.section(MetricsSettings, {
            "enabled": c.boolean, "host": c.string, "port": c.integer(1, 65535)}),
        "admin_socket": c.path,
        "partners": c.partners,
    }


def load_config_text(text: str, source: Path | None = None,
                     base_dir: Path | None = None) -> GatewayConfig:
    name = str(source) if source else "<config>"
    base = base_dir or (source.parent if source else Path.cwd())
    checker = _Checker(name, base.resolve() if not base.is_absolute() else base)
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(name, line, "", f"malformed YAML: {exc.problem}")]) \
            from None
    if document is None:
        document = CommentedMap()
    try:
        values = checker.mapping(document, "", 1, _top_level_spec(checker), ("domains",))
    except _Skip:
        raise ConfigError(checker.problems) from None
    if "domains" in values and not values["domains"] and not document.get("domains"):
        checker.problem(checker.key_line(document, "domains"), "domains",
                        "must name at least one served domain")
    partners = values.get("partners", ())
    for partner in partners:
        for domain in partner.domains:
            if domain in values.get("domains", ()):
                checker.problem(checker.key_line(document, "partners"), "partners",
                                f"{domain} is served by this gateway and cannot be a partner")
    if checker.problems:
        raise ConfigError(checker.problems)
    base = checker.base_dir
    values.setdefault("admin_socket", Path(os.path.normpath(base / "../run/gateway.sock")))
    default_store = Path(os.path.normpath(base / "../data/gateway.sqlite3"))
    values.setdefault("store", StoreSettings(default_store))
    if "tls" not in values:
        values["tls"] = TlsSettings(
            certificate=Path(os.path.normpath(base / "../certs/gateway.crt")),
            key=Path(os.path.normpath(base / "../certs/gateway.key")))
    return GatewayConfig(source=source, **values)


def load_config(path: Path) -> GatewayConfig:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return load_config_text(text, source=path, base_dir=path.parent.resolve())


def config_warnings(config: GatewayConfig) -> list[str]:
    """Things that work but deserve the admin's attention (``check config``)."""
    warnings = []
    for partner in config.partners:
        for text in partner.negotiation.warnings:
            warnings.append(f"partner {partner.primary_domain}: {text}")
    if not config.dialback.secret:
        warnings.append("dialback.secret is empty: a random secret is made at each start, so "
                        "several nodes of this gateway cannot verify each other's keys")
    if not config.tls.use_system_cas and config.tls.ca_file is None:
        warnings.append("tls.use_system_cas is false and no tls.ca_file is set: no peer "
                        "certificate can verify, SASL EXTERNAL will never be used")
    for label, path in (("tls.certificate", config.tls.certificate),
                        ("tls.key", config.tls.key)):
        if not Path(path).is_file():
            warnings.append(f"{label} {path} does not exist: STARTTLS will not be offered "
                            "(make certs creates development certificates)")
    if config.tls.ca_file is not None and not Path(config.tls.ca_file).is_file():
        warnings.append(f"tls.ca_file {config.tls.ca_file} does not exist")
    return warnings
