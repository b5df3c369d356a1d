"""The two OpenSSL operations pyOpenSSL has no public API for, and nothing else.

Everything in the gateway that reaches past pyOpenSSL's and cryptography's public surface
lives here, is detected before use and is exercised by :func:`self_test` when the TLS
provider is built at start, so that an upgrade which moves these internals stops the
gateway at once with a message saying what is missing — not at the first idle session or
the first configured ``tls.groups``:

* **Releasing an idle connection's memory BIOs** (:func:`release_memory_bios`). A memory
  BIO keeps the largest buffer it ever held (OpenSSL's ``bss_mem.c`` never shrinks it):
  after a handshake that is about 5 KiB per connection for as long as the session lives
  (docs/performance.md, memory per idle session). The BIOs are replaced with
  ``SSL_set_bio``, which frees the old ones, and pyOpenSSL's ``Connection._into_ssl`` /
  ``_from_ssl`` (what ``bio_write``/``bio_read`` use) are pointed at the new ones.
* **Setting the key-exchange groups of a context** (:func:`set_groups`,
  ``SSL_CTX_set1_groups_list``, which cryptography's bindings expose under its older name
  ``SSL_CTX_set1_curves_list``): pyOpenSSL has no setter, and the group's key share stays
  in each connection (X25519MLKEM768: about 8 KiB per session, X25519 0.1).

Both use cryptography's cffi binding of libssl (``OpenSSL._util.lib``/``ffi``) and
pyOpenSSL's private ``Connection._ssl``/``_into_ssl``/``_from_ssl`` and
``Context._context``. pyproject.toml bounds pyOpenSSL and cryptography to the major
versions this was checked with (:data:`KNOWN_GOOD`); a test checks that the installed
versions are within those bounds and that the self-test passes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from functools import cache
from typing import Any, Final

from OpenSSL import SSL

#: The versions this module was verified with (self-test and the TLS test suite), as
#: (lowest, highest) per distribution; pyproject.toml's bounds admit these majors.
#: cryptography exposes SSL_CTX_set1_curves_list from 47 on; pyOpenSSL accepts
#: cryptography 47 from 26.1 on.
KNOWN_GOOD: Final = {
    "pyOpenSSL": ("26.1.0", "26.4.0"),
    "cryptography": ("47.0.0", "50.0.2"),
}

# The libssl functions used through cryptography's binding.
_LIB_FUNCTIONS: Final = ("SSL_set_bio", "BIO_new", "BIO_s_mem", "BIO_free", "SSL_pending",
                         "BIO_get_mem_data", "SSL_CTX_set1_curves_list")
# pyOpenSSL's private attributes used.
_CONNECTION_ATTRIBUTES: Final = ("_ssl", "_into_ssl", "_from_ssl")
_CONTEXT_ATTRIBUTES: Final = ("_context",)


class OpenSslInternalsError(RuntimeError):
    """The installed pyOpenSSL/cryptography lack what this module needs; ``str()`` says
    what is missing, which versions are installed and which are known to work."""


def _binding() -> tuple[Any, Any] | None:
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None
    return lib, ffi


_BINDING = _binding()


def missing_features() -> list[str]:
    """What of the internals this module uses is absent (feature detection, no side
    effects beyond making one throw-away context and connection)."""
    if _BINDING is None:
        return ["OpenSSL._util.lib/ffi (cryptography's binding of libssl, as pyOpenSSL "
                "re-exports it)"]
    lib, _ffi = _BINDING
    missing = [f"libssl function {name} in cryptography's binding"
               for name in _LIB_FUNCTIONS if not hasattr(lib, name)]
    context = SSL.Context(SSL.TLS_METHOD)
    missing += [f"pyOpenSSL Context.{name}" for name in _CONTEXT_ATTRIBUTES
                if not hasattr(context, name)]
    connection = SSL.Connection(context, None)
    missing += [f"pyOpenSSL Connection.{name} (memory-BIO connection)"
                for name in _CONNECTION_ATTRIBUTES if getattr(connection, name, None) is None]
    return missing


def release_memory_bios(connection: SSL.Connection) -> bool:
    """Give ``connection`` fresh, empty memory BIOs, freeing the old ones; True if done.

    Only when nothing is in flight: OpenSSL holds no decrypted byte (``SSL_pending``) and
    both BIOs are empty, so nothing read or to be sent is lost. False (nothing changed)
    otherwise, or when allocating the new BIOs fails.
    """
    assert _BINDING is not None  # self_test() ran when the TLS provider was built
    lib, ffi = _BINDING
    ssl = connection._ssl
    into = connection._into_ssl
    out = connection._from_ssl
    if (into is None or out is None or lib.SSL_pending(ssl)
            or lib.BIO_get_mem_data(into, ffi.NULL) or lib.BIO_get_mem_data(out, ffi.NULL)):
        return False
    new_into, new_out = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL or new_out == ffi.NULL:  # out of memory: keep the old ones
        for bio in (new_into, new_out):
            if bio != ffi.NULL:
                lib.BIO_free(bio)
        return False
    lib.SSL_set_bio(ssl, new_into, new_out)
    connection._into_ssl = new_into
    connection._from_ssl = new_out
    return True


def set_groups(context: SSL.Context, names: list[str] | tuple[str, ...]) -> bool:
    """Offer/accept exactly the key-exchange ``names`` (OpenSSL group names, in order of
    preference) on ``context``; False when OpenSSL does not know one of them."""
    assert _BINDING is not None  # self_test() ran when the TLS provider was built
    lib, _ffi = _BINDING
    wanted = ":".join(names).encode("ascii", "replace")
    return bool(lib.SSL_CTX_set1_curves_list(context._context, wanted) == 1)


def installed_versions() -> dict[str, str]:
    versions = {}
    for name in KNOWN_GOOD:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@cache
def self_test() -> None:
    """Check the internals are there and behave: the BIOs of a connection that has just
    written its ClientHello are released and the connection goes on with the new ones; a
    known group is accepted and an unknown one refused. Raises
    :class:`OpenSslInternalsError`; runs once per process (a few milliseconds)."""
    problems = missing_features()
    if not problems:
        problems = _exercise()
    if problems:
        installed = ", ".join(f"{name} {version}" for name, version
                              in installed_versions().items())
        known = ", ".join(f"{name} {low} to {high}" for name, (low, high)
                          in KNOWN_GOOD.items())
        raise OpenSslInternalsError(
            "TLS cannot run with the installed pyOpenSSL/cryptography: "
            f"{'; '.join(problems)} (installed: {installed}; known to work: {known}; "
            "install the versions pyproject.toml allows, e.g. pip install -e .)")


def _exercise() -> list[str]:
    assert _BINDING is not None
    lib, ffi = _BINDING
    problems: list[str] = []
    context = SSL.Context(SSL.TLS_METHOD)
    if not set_groups(context, ["X25519"]):
        problems.append("SSL_CTX_set1_curves_list refused the group X25519")
    if set_groups(context, ["no-such-group"]):
        problems.append("SSL_CTX_set1_curves_list accepted an unknown group")
    client = SSL.Connection(context, None)
    client.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    hello = client.bio_read(65536)
    if not hello:
        return [*problems, "a client connection wrote no ClientHello into its memory BIO"]
    old_into = client._into_ssl
    if not release_memory_bios(client):
        return [*problems, "releasing the memory BIOs of an idle connection failed"]
    if client._into_ssl is old_into:
        problems.append("pyOpenSSL did not take the new memory BIO")
    # The start of a record: pyOpenSSL must write it into the new BIO and OpenSSL must
    # read it from there (it consumes the three bytes and waits for the rest).
    client.bio_write(b"\x16\x03\x03")
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    except SSL.Error as exc:
        problems.append(f"the connection failed after its BIOs were replaced: {exc}")
    if lib.BIO_get_mem_data(client._into_ssl, ffi.NULL) != 0:
        problems.append("OpenSSL does not read from the BIO pyOpenSSL writes into")
    return problems
