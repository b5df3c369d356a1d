"""Recording what the gateway writes on its S2S streams, in plain text (a debugging aid).

With ``XMPP_GATEWAY_RECORD_S2S=<directory>`` in the environment of ``xmpp-gateway run``,
every byte each S2S stream writes is appended, as written and before TLS encrypts it, to
a file of its own in ``<directory>``: ``<n>-<inbound|outbound>.xml``, ``n`` counting
streams from 1. It exists so that a test (testbed/servers.py) or an administrator
chasing a partner's "not well-formed" complaint can check every byte against a strict
XML parser; nothing else reads it.

Not for production: the files hold message bodies in clear and grow without bound, and
each write costs a system call. The gateway logs a WARNING at start when it is on.

One file holds the stream's successive XML documents: a stream restarts after STARTTLS
and after SASL (RFC 6120 §5.4.3.3, §6.4.6), each restart beginning with the gateway's
``<?xml version='1.0'?>`` header (:func:`split_documents` cuts them apart again).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import IO

from gateway.logs import log_event
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.stream import S2SStream, set_output_tap

log = logging.getLogger("gateway.s2s")

ENVIRONMENT = "XMPP_GATEWAY_RECORD_S2S"
DOCUMENT_START = b"<?xml version='1.0'?>"
OPEN_FILES = 256  # the streams recorded at once; the least recently written are closed


class S2SOutputRecorder:
    """The tap :func:`gateway.xmpp.stream.set_output_tap` calls (see the module doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)
        # id(stream) -> (the stream, kept so its id is not reused while recorded; file name)
        self._names: dict[int, tuple[S2SStream, str]] = {}
        self._open: OrderedDict[str, IO[bytes]] = OrderedDict()

    def __call__(self, stream: S2SStream, data: bytes) -> None:
        known = self._names.get(id(stream))
        if known is None:
            direction = "inbound" if isinstance(stream, InboundStream) else "outbound"
            known = self._names[id(stream)] = (stream, f"{next(self._numbers)}-{direction}.xml")
        name = known[1]
        handle = self._open.get(name)
        if handle is None:
            if len(self._open) >= OPEN_FILES:
                self._open.popitem(last=False)[1].close()
            handle = self._open[name] = (self.directory / name).open("ab")
        else:
            self._open.move_to_end(name)
        handle.write(data)
        handle.flush()  # a test reads the files while the gateway runs or after a kill

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()
        self._names.clear()


def install_from_environment() -> S2SOutputRecorder | None:
    """Start recording when :data:`ENVIRONMENT` names a directory (see the module doc)."""
    directory = os.environ.get(ENVIRONMENT)
    if not directory:
        return None
    recorder = S2SOutputRecorder(Path(directory))
    set_output_tap(recorder)
    log_event(log, logging.WARNING, "s2s.recording", directory=directory,
              reason=f"{ENVIRONMENT} is set: every byte written on S2S streams is stored "
                     "in clear (a debugging aid, not for production)")
    return recorder


def split_documents(data: bytes) -> list[bytes]:
    """The XML documents of one recorded stream, in order (see the module doc)."""
    parts = data.split(DOCUMENT_START)
    documents = [DOCUMENT_START + part for part in parts[1:]]
    if parts[0]:  # bytes before the first header: kept, so that a checker sees them
        documents.insert(0, parts[0])
    return documents
