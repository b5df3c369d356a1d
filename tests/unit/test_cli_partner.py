"""The partner commands, including all 18 matrix rows through `partner add`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config.editor import ConcurrentEdit, edit_partners
from gateway.config.loader import load_config
from gateway.config.model import PartnerType
from gateway.policy.negotiation import Support
from tests.support.matrix import MatrixRow, matrix_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
ROWS = matrix_rows()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def run(config: Path, *args: str) -> int:
    return main(["-c", str(config), *args])


def warnings_in(out: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in out.splitlines()
            if line.startswith("warning: ")]


def test_the_matrix_splits_13_accepted_5_refused() -> None:
    # Counted from the normative CSV: 13 combinations accepted, 5 refused.
    assert sum(r.valid for r in ROWS) == 13 and sum(not r.valid for r in ROWS) == 5


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.label)
def test_partner_add_follows_the_matrix(config: Path, row: MatrixRow, capsys) -> None:
    before = config.read_bytes()
    status = run(config, "partner", "add", "new.example", "--type", "federated",
                 "--tls", str(row.tls), "--sasl", str(row.sasl),
                 "--dialback", str(row.dialback).lower())
    out, err = capsys.readouterr()
    if not row.valid:
        assert status == 2
        assert err == (f"refused: tls={row.tls}, sasl={row.sasl}, "
                       f"dialback={str(row.dialback).lower()}: {row.notes}\n")
        assert out == ""
        assert config.read_bytes() == before, "a refused add must not touch the file"
        return
    assert status == 0, err
    assert out.splitlines()[0] == f"added new.example: permits {'; '.join(row.methods)}"
    assert warnings_in(out) == ([row.notes] if row.notes else [])
    # Exactly the new entry was appended; nothing else in the file moved.
    after = config.read_bytes()
    assert after.startswith(before)
    assert after[len(before):].decode().splitlines() == [
        "  - domain: new.example", "    type: federated", f"    tls: {row.tls}",
        f"    sasl: {row.sasl}", f"    dialback: {str(row.dialback).lower()}"]
    policy = load_config(config).partner_for("new.example")
    assert policy is not None
    assert (policy.tls, policy.sasl, policy.dialback) == (row.tls, row.sasl, row.dialback)


@pytest.mark.parametrize("row", [r for r in ROWS if not r.valid], ids=lambda r: r.label)
def test_partner_set_into_an_invalid_row_is_refused(config: Path, row: MatrixRow,
                                                    capsys) -> None:
    before = config.read_bytes()
    assert run(config, "partner", "set", "prosody.localhost", "--tls", str(row.tls),
               "--sasl", str(row.sasl), "--dialback", str(row.dialback).lower()) == 2
    assert row.notes in capsys.readouterr().err
    assert config.read_bytes() == before


def test_set_combines_new_and_current_settings(config: Path, capsys) -> None:
    # current: tls=optional sasl=optional dialback=true; only dialback changes
    assert run(config, "partner", "set", "prosody.localhost", "--dialback", "false") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "updated prosody.localhost: permits SASL over TLS"
    assert warnings_in(out) == [
        "SASL requires TLS. Allowing TLS to be optional may result in failed session "
        "negotiations."]
    assert run(config, "partner", "set", "prosody.localhost", "--sasl", "not-supported") == 2
    assert "SASL or Dialback must be enabled." in capsys.readouterr().err


def test_set_changes_only_the_lines_concerned(config: Path) -> None:
    before = config.read_text().splitlines()
    assert run(config, "partner", "set", "conference.prosody.localhost", "--type",
               "public-unverified", "--tls", "required", "--description", "Prosody") == 0
    after = config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        ("    type: federated                      # federated | public-verified | "
         "public-unverified",
         "    type: public-unverified              # federated | public-verified | "
         "public-unverified"),
        ("    tls: optional                        # required | optional | not-supported",
         "    tls: required                        # required | optional | not-supported"),
        ('    description: "Example partner: a local Prosody"', '    description: "Prosody"'),
    ]
    policy = load_config(config).partner_for("prosody.localhost")
    assert policy is not None and policy.partner_type is PartnerType.PUBLIC_UNVERIFIED
    assert policy.tls is Support.REQUIRED and policy.description == "Prosody"


def test_additional_domains(config: Path, capsys) -> None:
    assert run(config, "partner", "set", "prosody.localhost", "--add-domain",
               "MUC.Prosody.Localhost", "--remove-domain", "conference.prosody.localhost") == 0
    assert "    additional_domains: [muc.prosody.localhost]" in config.read_text()
    before = config.read_bytes()
    assert run(config, "partner", "set", "prosody.localhost", "--remove-domain",
               "nope.example") == 2
    assert "nope.example is not an additional domain of partner prosody.localhost" in \
        capsys.readouterr().err
    assert run(config, "partner", "set", "prosody.localhost", "--remove-domain",
               "muc.prosody.localhost") == 0
    assert "additional_domains" not in config.read_text().split("partners:")[1]
    assert before != config.read_bytes()


def test_add_then_remove_restores_the_file_byte_for_byte(config: Path) -> None:
    before = config.read_bytes()
    assert run(config, "partner", "add", "x.example", "--type", "public-verified",
               "--additional-domain", "muc.x.example", "--description", "X Corp") == 0
    text = config.read_text()
    assert "    additional_domains: [muc.x.example]\n    description: X Corp\n" in text
    assert "# Federation partners (docs/configuration.md)." in text
    assert "# XEP-0185 secret for dialback keys." in text
    assert "  file: null             # null = standard error" in text
    assert run(config, "partner", "remove", "muc.x.example") == 0
    assert config.read_bytes() == before


def test_comments_survive_removing_the_example_partner(config: Path) -> None:
    assert run(config, "partner", "remove", "prosody.localhost") == 0
    text = config.read_text()
    assert "# Federation partners (docs/configuration.md)." in text
    assert "prosody" not in text.split("# Federation partners")[1]
    assert load_config(config).partners == ()


def test_duplicate_domain_is_refused(config: Path, capsys) -> None:
    before = config.read_bytes()
    assert run(config, "partner", "add", "other.example", "--type", "federated",
               "--additional-domain", "conference.prosody.localhost") == 2
    err = capsys.readouterr().err
    assert "conference.prosody.localhost already belongs to partner prosody.localhost" in err
    assert config.read_bytes() == before
    assert run(config, "partner", "add", "Conference.Prosody.Localhost.", "--type",
               "federated") == 2
    assert "is already a domain of partner prosody.localhost (use partner set)" in \
        capsys.readouterr().err
    assert run(config, "partner", "add", "gateway.localhost", "--type", "federated") == 2
    assert "gateway.localhost is served by this gateway" in capsys.readouterr().err
    assert config.read_bytes() == before


def test_invalid_domain_is_named(config: Path, capsys) -> None:
    before = config.read_bytes()
    assert run(config, "partner", "add", "bad domain", "--type", "federated") == 2
    assert "'bad domain' is not a valid domain" in capsys.readouterr().err
    assert run(config, "partner", "add", "ok.example", "--type", "federated",
               "--additional-domain", "x..example") == 2
    assert "'x..example' is not a valid domain" in capsys.readouterr().err
    assert config.read_bytes() == before


def test_unknown_partner_on_set_show_remove(config: Path, capsys) -> None:
    before = config.read_bytes()
    for action in (["set", "nobody.example", "--tls", "required"], ["show", "nobody.example"],
                   ["remove", "nobody.example"]):
        assert run(config, "partner", *action) == 1
        assert capsys.readouterr().err == f"error: nobody.example is not a partner in {config}\n"
    assert config.read_bytes() == before


def test_set_without_changes_is_refused(config: Path, capsys) -> None:
    assert run(config, "partner", "set", "prosody.localhost") == 2
    assert "nothing to change" in capsys.readouterr().err


def test_show(config: Path, capsys) -> None:
    assert run(config, "partner", "show", "conference.prosody.localhost") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["domain", "prosody.localhost"]
    assert "permitted methods    SASL over TLS; TLS Dialback; TCP Dialback" in lines
    assert run(config, "partner", "show", "prosody.localhost", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "domain": "prosody.localhost", "additional_domains": ["conference.prosody.localhost"],
        "type": "federated", "tls": "optional", "sasl": "optional", "dialback": True,
        "description": "Example partner: a local Prosody",
        "permitted_methods": ["SASL over TLS", "TLS Dialback", "TCP Dialback"],
        "warnings": ["SASL requires TLS. Allowing TLS to be optional may result in failed "
                     "session negotiations."],
        "in_effect": "this partner will use SASL EXTERNAL over TLS (certificates must verify "
                     "both ways) when it can, else dialback over TLS, and unencrypted TCP "
                     "dialback when it offers no TLS"}


def test_list_is_an_aligned_table(config: Path, capsys) -> None:
    assert run(config, "partner", "add", "b.example", "--type", "public-unverified",
               "--tls", "required", "--sasl", "required", "--dialback", "false") == 0
    capsys.readouterr()
    assert run(config, "partner", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "DOMAINS", "prosody.localhost, conference.prosody.localhost", "b.example"]
    column = lines[0].index("PERMITTED METHODS")
    assert lines[1][column:] == "SASL over TLS; TLS Dialback; TCP Dialback"
    assert lines[2][column:] == "SASL over TLS"
    type_column = lines[0].index("TYPE")
    assert lines[2][type_column:].split()[:4] == ["public-unverified", "required", "required",
                                                  "false"]
    assert run(config, "partner", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["domain"] for r in rows] == ["prosody.localhost", "b.example"]


def test_list_without_partners(config: Path, capsys) -> None:
    assert run(config, "partner", "remove", "prosody.localhost") == 0
    capsys.readouterr()
    assert run(config, "partner", "list") == 0
    assert capsys.readouterr().out.startswith("no partners in ")


def test_file_mode_is_kept_and_a_symlink_stays_a_link(tmp_path: Path, config: Path) -> None:
    config.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(config)
    assert run(link, "partner", "add", "x.example", "--type", "federated") == 0
    assert link.is_symlink() and load_config(config).partner_for("x.example") is not None
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_other_indentation_styles_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    original = ("domains:\n- a.example\npartners:\n- domain: b.example  # B\n"
                "  type: federated\n")
    path.write_text(original)
    assert run(path, "partner", "add", "c.example", "--type", "federated") == 0
    assert path.read_text() == original + ("- domain: c.example\n  type: federated\n"
                                           "  tls: optional\n  sasl: optional\n"
                                           "  dialback: true\n")


def test_a_file_without_partners_gets_a_list(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("# served\ndomains: [a.example]\n")
    assert run(path, "partner", "add", "b.example", "--type", "federated",
               "--tls", "required") == 0
    assert path.read_text().startswith("# served\ndomains: [a.example]\npartners:\n")
    assert load_config(path).partner_for("b.example") is not None


def test_malformed_file_is_explained_and_untouched(tmp_path: Path, capsys) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("domains: [a.example\npartners: []\n")
    assert run(path, "partner", "add", "b.example", "--type", "federated") == 2
    assert f"{path}:2: malformed YAML" in capsys.readouterr().err
    assert path.read_text() == "domains: [a.example\npartners: []\n"


def test_an_invalid_entry_can_be_removed_to_fix_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("domains: [a.example]\npartners:\n"
                    "  - {domain: b.example, type: federated, sasl: not-supported, "
                    "dialback: false}\n")
    assert run(path, "partner", "remove", "b.example") == 0
    assert load_config(path).partners == ()


def test_a_concurrent_change_is_not_overwritten(config: Path) -> None:
    theirs = config.read_text().replace("level: info", "level: debug")

    def change(partners) -> None:  # another writer saves while we edit
        config.write_text(theirs)
        partners.append({"domain": "x.example", "type": "federated"})

    with pytest.raises(ConcurrentEdit, match="changed by someone else"):
        edit_partners(config, change)
    assert config.read_text() == theirs
    assert [p for p in os.listdir(config.parent) if p.endswith(".tmp")] == []


def test_remove_takes_the_entry_comment_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    head = "domains: [gw.example]\npartners:\n\n  # Not about any entry\n\n"
    entries = {
        "a": "  # Partner A\n  - domain: a.example\n    type: federated   # A's type\n",
        "b": "\n  # Partner B\n  - domain: b.example\n    type: federated\n",
        "c": "  # Partner C\n  - domain: c.example\n    type: federated\n",
    }
    tail = "# Logging\nlogging: {level: info}\n"
    for removed, expected in [
        ("a", head + entries["b"].lstrip("\n") + entries["c"] + tail),
        ("b", head + entries["a"] + "\n" + entries["c"] + tail),
        ("c", head + entries["a"] + entries["b"] + tail),
    ]:
        path.write_text(head + "".join(entries.values()) + tail)
        assert run(path, "partner", "remove", f"{removed}.example") == 0
        assert path.read_text() == expected, removed


def test_removing_the_last_partner_keeps_the_list_valid(config: Path) -> None:
    assert run(config, "partner", "remove", "prosody.localhost") == 0
    text = config.read_text()
    assert "  # - domain: chat.example.org" in text  # the commented-out example stays
    assert "# A local Prosody" not in text  # the entry's own comment went with it
    assert load_config(config).partners == ()
    assert run(config, "partner", "add", "x.example", "--type", "federated") == 0
    assert [p.primary_domain for p in load_config(config).partners] == ["x.example"]
