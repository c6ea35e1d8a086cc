"""B32: every option of qvm-backup-restore has an effect, and unknown ones are refused.

OPTIONS names, for each option of the parser, the test that shows its effect; a new
option without a test fails `test_every_option_is_accounted_for`. The plan options that
other files test only at the plan level are run end to end here.
"""
from __future__ import annotations

import subprocess

import pytest

from qubes.tools import qvm_backup_restore
from tests.conftest import peers_or_skip, run

PASS = "options passphrase"

OPTIONS = {
    "help": "argparse",
    "force_root": "tests/tools/test_startup.py (root refusal)",
    "debug": "tests/tools/test_startup.py (--debug traceback)",
    "offline_mode": "tests/tools/test_startup.py (offline mode)",
    "source_command": "test_cases_af.py::test_b12_failing_source_command_*",
    "verify_only": "test_cases_af.py::test_b54_verify_only_changes_no_state",
    "dry_run": "test_cases_af.py::test_b29_dry_run_shows_every_vms_final_template",
    "skip_broken": "here: test_missing_template_options_end_to_end",
    "ignore_missing": "here: test_missing_template_options_end_to_end",
    "skip_conflicting": "here: test_conflicting_names_end_to_end",
    "rename_conflicting": "here: test_conflicting_names_end_to_end",
    "replace_template": "here: test_missing_template_options_end_to_end",
    "exclude": "test_restore_attack_findings.py::test_contradictory_requests_*",
    "skip_dom0_home": "test_dom0_home.py::test_skip_dom0_home_and_verify_only",
    "log": "test_cases_gaps.py::test_b06_*",
    "dom0_home_dir": "test_dom0_home.py::test_home_round_trip_*",
    "ignore_username_mismatch": "test_dom0_home.py::test_username_mismatch_is_refused_*",
    "passphrase_file": "every restore test",
    "yes": "test_questions.py",
    "tmpdir": "test_cases_gaps.py::test_b19_*",
    "quiet": "here: test_conflicting_names_end_to_end",
    "progress": "test_cases_gaps.py::test_b50_restore_progress_*",
    "source": "every restore test",
    "vms": "here: test_missing_template_options_end_to_end",
}


def test_every_option_is_accounted_for():
    parser = qvm_backup_restore.build_parser()
    assert {a.dest for a in parser._actions} == set(OPTIONS)


def test_an_unknown_or_removed_option_is_a_usage_error(base):
    for option in ("--no-such-option", "--skip-dom0", "--no-verify"):
        proc = run("qvm-backup-restore", option, "x.bin", check=False)
        assert proc.returncode == 2 and b"unrecognized arguments" in proc.stderr, option


@pytest.fixture
def backup(tmp_path):
    """tpl (TemplateVM) and work (AppVM on tpl), no dom0 home."""
    peers = peers_or_skip()
    pfile = tmp_path / "pass"
    pfile.write_text(PASS + "\n")
    out = tmp_path / "b.bin"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", pfile, "--no-home",
                    "--vm", "template:tpl", "--vm", "app:work", out], check=True,
                   capture_output=True)
    return pfile, out


def restore(pfile, *args):
    return run("qvm-backup-restore", "-y", "--progress", "none", "--passphrase-file", pfile,
               *args, check=False)


def prefs(vm: str, prop: str) -> str:
    return run("qvm-prefs", "-g", vm, prop).stdout.decode().strip()


def test_missing_template_options_end_to_end(base, backup):
    """`work` alone, its template neither restored nor here: refused by default; left out
    with --skip-broken; on the default template with --ignore-missing; on the named one
    with --replace-template."""
    pfile, bin_ = backup
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "base")
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "other")
    run("qubes-prefs", "-s", "default_template", "base")
    proc = restore(pfile, bin_, "work")
    assert proc.returncode == 1 and b"template 'tpl' is neither in the restore set" in \
        proc.stderr
    proc = restore(pfile, "--skip-broken", bin_, "work")
    assert proc.returncode == 1 and b"VM work: skipped: its template 'tpl'" in proc.stdout
    assert b"work" not in run("qvm-ls", "--raw-list").stdout
    proc = restore(pfile, "--replace-template", "tpl:other", bin_, "work")
    assert proc.returncode == 0, proc.stderr
    assert prefs("work", "template") == "other"
    run("qvm-remove", "work")
    proc = restore(pfile, "--ignore-missing", bin_, "work")
    assert proc.returncode == 0, proc.stderr
    assert prefs("work", "template") == "base"


def test_conflicting_names_end_to_end(base, backup):
    """The second restore meets both names taken: skipped (the default and
    --skip-conflicting say so), or restored as tpl1/work1 with work1 on tpl1."""
    pfile, bin_ = backup
    assert restore(pfile, bin_).returncode == 0
    for flags in ((), ("--skip-conflicting",)):
        proc = restore(pfile, *flags, bin_)
        assert b"VM work: skipped: a VM named 'work' already exists" in proc.stdout, flags
    proc = restore(pfile, "-q", "--rename-conflicting", bin_)
    assert proc.returncode == 0, proc.stderr
    assert b"The following VMs" not in proc.stdout  # -q: no plan table
    assert prefs("work1", "template") == "tpl1"
