"""The gateway's parts meet through typed contracts, not attribute probes.

``hasattr``/``getattr`` on the gateway's own objects hide a contract (which methods a
backend really needs, what a setting's default is) where neither the type checker nor a
reader can see it. They are counted here: every one left is at a genuine boundary with
code the gateway does not own, and says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# (file under gateway/, the probed attribute's name, "?" when computed) -> why it is a
# boundary.
ALLOWED = {
    ("auth/identity.py", "to_cryptography"):
        "pyOpenSSL's X509 or a cryptography certificate may come in: third-party types",
    ("xmpp/openssl_internals.py", "?"):
        "feature detection of pyOpenSSL's and OpenSSL's internals, confined to that module",
    ("sip/transport.py", "SO_RCVBUFFORCE"):
        "the socket module has the constant on Linux builds only",
    ("sip/transport.py", "SO_MEMINFO"): "the socket module has the constant on Linux builds only",
    ("logs.py", "gw_fields"):
        "structured fields ride on the standard library's LogRecord (logging's extra=)",
    ("cli/check.py", "cluster"): "argparse namespaces: each subcommand defines its own options",
    ("cli/cluster.py", "json"): "argparse namespaces: each subcommand defines its own options",
}


def probes() -> list[tuple[str, str, int]]:
    """(file, attribute name or '?', line) of every hasattr/getattr call."""
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        relative = path.relative_to(GATEWAY).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2:
                name = node.args[1]
                if isinstance(name, ast.Name):  # a module constant such as FIELDS_ATTR
                    name = _constant(tree, name.id) or name
                attribute = name.value if isinstance(name, ast.Constant) else "?"
                found.append((relative, str(attribute), node.lineno))
    return found


def _constant(tree: ast.Module, identifier: str) -> ast.Constant | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(
                isinstance(target, ast.Name) and target.id == identifier
                for target in node.targets):
            return node.value
    return None


def test_attribute_probes_are_only_at_third_party_boundaries() -> None:
    unexplained = [f"gateway/{file}:{line} probes {attribute!r}"
                   for file, attribute, line in probes() if (file, attribute) not in ALLOWED]
    assert unexplained == [], "use a typed contract (gateway/contracts.py) instead"


def test_the_allowlist_has_no_stale_entries() -> None:
    present = {(file, attribute) for file, attribute, _line in probes()}
    assert set(ALLOWED) <= present, set(ALLOWED) - present
