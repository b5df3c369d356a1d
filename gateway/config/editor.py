"""Comment-preserving, atomic edits of the partner list (``xmpp-gateway partner …``).

The file is edited the way an administrator would by hand: ruamel.yaml's round-trip mode
keeps comments, key order, quoting and flow/block style, and the file's own indentation
is detected and reused, so an edit changes only the lines of the entry concerned.

Safety, in order:

1. the whole edited document is validated with the loader *before* anything is written;
   an invalid result raises :class:`ConfigError` and the file stays byte-for-byte
   untouched;
2. the new text goes to a temporary file in the same directory, is fsynced and renamed
   over the original (keeping its mode, and its owner where we may), then the directory
   is fsynced: a crash leaves either the old file or the new one, never half of one;
3. if the file changed on disk while we were editing (another ``partner`` command, an
   editor), nothing is written and :class:`ConcurrentEdit` says so — no lost update.

A symbolic link is followed: the file it points to is replaced, the link stays.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

from gateway.config.fields import file_keys
from gateway.config.loader import ConfigError, ConfigProblem, load_config, load_config_text
from gateway.config.model import GatewayConfig, PartnerPolicy
from gateway.domain import DomainError, normalize_domain

__all__ = [
    "ConcurrentEdit",
    "PartnerNotFound",
    "add_partner",
    "edit_partners",
    "remove_partner",
    "set_partner",
]

# Key order of a new entry: the model's (also that of docs/configuration.md and of
# config/gateway.yaml).
PARTNER_KEYS = file_keys(PartnerPolicy)


class PartnerNotFound(LookupError):
    """No partner entry has this domain (primary or additional); ``str()`` is the domain."""


class ConcurrentEdit(RuntimeError):
    """The file changed on disk between reading and writing; nothing was written."""


_BLOCK_KEY = re.compile(r"^(?P<indent> *)[^\s#-][^#]*:\s*(#.*)?$")
_SEQUENCE_ITEM = re.compile(r"^(?P<indent> *)- ")


def _indentation(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation as the file uses them (ruamel's terms).

    ruamel.yaml writes one indentation style for the whole document; reusing the file's
    own keeps untouched sections byte-for-byte as they were.
    """
    mapping = sequence = offset = None
    lines = [line for line in text.splitlines() if line.strip() and
             not line.lstrip().startswith("#")]
    for current, following in itertools.pairwise(lines):
        parent = _BLOCK_KEY.match(current)
        if not parent:
            continue
        depth = len(parent["indent"])
        item = _SEQUENCE_ITEM.match(following)
        child_indent = len(following) - len(following.lstrip(" "))
        if item and sequence is None and len(item["indent"]) >= depth:
            offset = len(item["indent"]) - depth
            sequence = offset + 2
        elif not item and mapping is None and child_indent > depth:
            mapping = child_indent - depth
        if mapping is not None and sequence is not None:
            break
    mapping = mapping or 2
    if sequence is None:  # no block sequence yet: indent like the mappings, dash inside
        offset, sequence = mapping, mapping + 2
    assert offset is not None
    return mapping, max(sequence, offset + 2), offset


def _yaml(text: str) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap an administrator's long lines
    mapping, sequence, offset = _indentation(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    # Write null as "null" (ruamel's default is an empty value) so `file: null` stays put.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _names(entry: Any) -> Iterable[str]:
    if not isinstance(entry, dict):
        return ()
    extra = entry.get("additional_domains") or []
    return [entry.get("domain", ""), *(extra if isinstance(extra, list) else [extra])]


def _same(name: Any, domain: str) -> bool:
    try:
        return normalize_domain(str(name)) == domain
    except DomainError:
        return False


def _find(partners: CommentedSeq, domain: str) -> int | None:
    """Index of the entry that has ``domain`` (normalised) as primary or additional."""
    for index, entry in enumerate(partners):
        if any(_same(name, domain) for name in _names(entry)):
            return index
    return None


def edit_partners(path: Path, change: Callable[[CommentedSeq], None]) -> GatewayConfig:
    """Apply ``change`` to the partner list, validate, write atomically; return the result.

    ``change`` may raise (:class:`PartnerNotFound`, :class:`ConfigError`) to abandon the
    edit; nothing is written then either.
    """
    shown = Path(path)  # messages name the file as the administrator did
    path = shown.resolve()  # follow a symlink: replace its target, keep the link
    original = path.read_bytes()
    base_dir = shown.parent.resolve()  # the anchor load_config(shown) uses
    try:
        text = original.decode("utf-8")
        yaml = _yaml(text)
        document = yaml.load(text)
    except (UnicodeDecodeError, YAMLError):
        # The file need not be valid to be edited (removing a bad entry fixes it), but it
        # must be YAML; the loader says where it is not.
        load_config(shown)
        raise
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ConfigError([ConfigProblem(str(shown), 1, "", None,
                                         "the file is not a YAML mapping of keys")])
    partners = document.get("partners")
    if partners is None:
        partners = CommentedSeq()
        document["partners"] = partners
    elif not isinstance(partners, CommentedSeq):
        line = document.lc.key("partners")[0] + 1
        raise ConfigError([ConfigProblem(str(shown), line, "partners", partners,
                                         "must be a list of partner entries")])
    if not partners:
        partners.fa.set_block_style()  # a first entry is written like the example's
    change(partners)
    if partners.ca.comment is not None and not partners.ca.comment[1]:
        partners.ca.comment = None  # an emptied start comment, also on the parent's key
        slot = document.ca.items.get("partners")
        if slot and len(slot) > 3 and not slot[3]:
            slot[3] = None
    if not partners:
        # ruamel.yaml writes an empty *block* list after comments as a "[]" in column 0,
        # which is not YAML; a flow list is indented under its key and stays valid.
        partners.fa.set_flow_style()
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    new_text = buffer.getvalue()
    config = load_config_text(new_text, source=shown, base_dir=base_dir)
    _atomic_write(path, new_text.encode("utf-8"), expected=original)
    return config


def _atomic_write(path: Path, data: bytes, *, expected: bytes) -> None:
    status = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, status.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):  # not root: it becomes ours, as usual
            os.chown(tmp, status.st_uid, status.st_gid)
        if path.read_bytes() != expected:
            raise ConcurrentEdit(f"{path} was changed by someone else while it was being "
                                 "edited; nothing was written — run the command again")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _domain_list(domains: Iterable[str]) -> CommentedSeq:
    """A flow-style list, as in the example file: ``[conference.a.example]``."""
    seq = CommentedSeq(domains)
    seq.fa.set_flow_style()
    return seq


def add_partner(path: Path, entry: dict[str, Any]) -> GatewayConfig:
    """Append a partner entry (keys of :data:`PARTNER_KEYS`; None values are left out)."""
    domain = normalize_domain(entry["domain"])

    def change(partners: CommentedSeq) -> None:
        index = _find(partners, domain)
        if index is not None:
            owner = partners[index].get("domain")
            detail = "a partner" if _same(owner, domain) else f"a domain of partner {owner}"
            raise ConfigError([ConfigProblem(
                str(path), _item_line(partners, index), f"partners[{index}]", domain,
                f"{domain} is already {detail} (use partner set)")])
        item = CommentedMap()
        for key in PARTNER_KEYS:
            value = entry.get(key)
            if value is None or (key == "additional_domains" and not value):
                continue
            item[key] = _domain_list(value) if key == "additional_domains" else value
        partners.append(item)

    return edit_partners(path, change)


def set_partner(path: Path, domain: str, updates: dict[str, Any],
                add_domains: list[str], remove_domains: list[str]) -> GatewayConfig:
    """Change the entry that has ``domain``: keys with a None value are left as they are."""
    domain = normalize_domain(domain)
    removing = [normalize_domain(d) for d in remove_domains]

    def change(partners: CommentedSeq) -> None:
        index = _find(partners, domain)
        if index is None:
            raise PartnerNotFound(domain)
        item = partners[index]
        for key, value in updates.items():
            if key not in PARTNER_KEYS or key in ("domain", "additional_domains"):
                raise ValueError(f"partner key {key!r} cannot be set this way")
            if value is not None:
                item[key] = value
        if not (add_domains or removing):
            return
        current = item.get("additional_domains") or []
        if isinstance(current, str):
            current = [current]
        for name in removing:
            if not any(_same(d, name) for d in current):
                raise ConfigError([ConfigProblem(
                    str(path), _item_line(partners, index),
                    f"partners[{index}].additional_domains", name,
                    f"{name} is not an additional domain of partner {item.get('domain')}")])
        kept = [d for d in current if not any(_same(d, name) for name in removing)]
        kept += list(add_domains)
        if isinstance(current, CommentedSeq):  # keep its style and comments
            current[:] = kept
        elif kept:
            item["additional_domains"] = _domain_list(kept)
        if not kept:
            item.pop("additional_domains", None)

    return edit_partners(path, change)


def remove_partner(path: Path, domain: str) -> GatewayConfig:
    """Remove the entry that has ``domain`` (primary or additional)."""
    domain = normalize_domain(domain)

    def change(partners: CommentedSeq) -> None:
        index = _find(partners, domain)
        if index is None:
            raise PartnerNotFound(domain)
        _delete_entry(partners, index)

    return edit_partners(path, change)


def _delete_entry(seq: CommentedSeq, index: int) -> None:
    """Delete ``seq[index]`` together with the comment block written right above it.

    ruamel.yaml stores full-line comments with the node *before* them: the comment above
    entry i hangs off the last value of entry i-1 (or is the list's start comment), and
    the comment above entry i+1 hangs off entry i. A plain ``del`` would leave entry i's
    comment above entry i+1 and drop entry i+1's. So: the comment lines directly above
    the removed entry go with it (lines before a blank line stay: they are about
    something else), and the lines that followed it move up to take their place.
    """
    following = _comment_text(_split_trailing(seq[index])[1])
    if index > 0:
        own, leading = _split_trailing(seq[index - 1])
        _set_trailing(seq[index - 1], own, _join(_kept(_comment_text(leading)), following))
    else:
        tokens = seq.ca.comment[1] if seq.ca.comment and seq.ca.comment[1] else []
        leading = "".join(" " * (t.column or 0) + t.value if t.value.startswith("#")
                          else t.value for t in tokens)
        lines = _join(_kept(_comment_text(leading)), following)
        if seq.ca.comment and seq.ca.comment[1] is not None:
            seq.ca.comment[1][:] = _comment_tokens(lines)  # shared with the parent's key
        elif lines:
            seq.ca.comment = [None, _comment_tokens(lines)]
    del seq[index]


def _comment_text(text: str) -> list[str]:
    """Comment text as lines ("" = blank line)."""
    return text.split("\n")[:-1] if text else []


def _kept(lines: list[str]) -> list[str]:
    """The part of a comment block that is not about the entry below it."""
    blanks = [i for i, line in enumerate(lines) if not line.strip()]
    return lines[: blanks[-1] + 1] if blanks else []


def _join(kept: list[str], following: list[str]) -> list[str]:
    if kept and following and not kept[-1].strip() and not following[0].strip():
        following = following[1:]
    return kept + following


def _comment_tokens(lines: list[str]) -> list[CommentToken]:
    return [CommentToken(line.lstrip(" ") + "\n",
                         CommentMark(len(line) - len(line.lstrip(" "))), None)
            for line in lines]


def _trailing_slot(node: Any) -> tuple[dict[Any, Any], Any, int] | None:
    """Where ruamel.yaml keeps the comment that follows ``node``'s last scalar."""
    if isinstance(node, CommentedMap) and node:
        key, position = list(node)[-1], 2
    elif isinstance(node, CommentedSeq) and node:
        key, position = len(node) - 1, 0
    else:
        return None
    slot = node.ca.items.get(key)
    if slot and slot[position] is not None:
        return node.ca.items, key, position
    inner = _trailing_slot(node[key])
    return inner or (node.ca.items, key, position)


def _split_trailing(node: Any) -> tuple[str, str]:
    """(end-of-line comment, following full-line comments) after ``node``."""
    found = _trailing_slot(node)
    if found is None:
        return "", ""
    items, key, position = found
    slot = items.get(key)
    token = slot[position] if slot else None
    if token is None:
        return "", ""
    own, _, rest = token.value.partition("\n")
    return own, rest


def _set_trailing(node: Any, own: str, lines: list[str]) -> None:
    found = _trailing_slot(node)
    if found is None:
        return
    items, key, position = found
    slot = items.setdefault(key, [None, None, None, None])
    if not own and not lines:
        slot[position] = None
        return
    token = slot[position] or CommentToken("", CommentMark(0), None)
    token.value = own + "\n" + "".join(line + "\n" for line in lines)
    slot[position] = token


def _item_line(seq: CommentedSeq, index: int) -> int | None:
    try:
        return int(seq.lc.item(index)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None
