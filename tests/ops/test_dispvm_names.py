"""DisposableVM names (CASES.md B103) and where their files go, without a hypervisor."""
from __future__ import annotations

import pytest

from qubes.errors import QubesError
from qubes.ops import dispvm
from qubes.ops.create import CreateOptions, create_vm
from qubes.store.access import read_collection
from qubes.util.host import LocalHost
from qubes.vmm.offline import OfflineHypervisor
from tests.conftest import run


@pytest.fixture
def tpl(base):
    (base / "vm-templates" / "t").mkdir(parents=True)
    (base / "vm-templates" / "t" / "root.img").write_bytes(b"")
    run("qvm-add-template", "t")
    run("qvm-create", "-l", "red", "disp1x")  # a look-alike name is fine
    return base


def test_names_skip_existing_vms_and_are_never_handed_out_twice(tpl, monkeypatch):
    host, hv = LocalHost(str(tpl)), OfflineHypervisor()
    first = dispvm.create(str(tpl), host, "t")
    assert (tpl / "appvms" / first / "private.img").is_file()
    assert dispvm.remove_if_stopped(str(tpl), host, hv, first)
    assert not (tpl / "appvms" / first).exists()
    second = dispvm.create(str(tpl), host, "t")
    assert first != second
    with read_collection(str(tpl), host) as app:
        assert app[second].is_disposablevm and app[second].template.name == "t"


def test_dispn_names_are_reserved_for_disposablevms(tpl):
    with pytest.raises(QubesError, match="reserved"):
        create_vm(str(tpl), LocalHost(str(tpl)), CreateOptions(name="disp7", label="red"))


def test_only_a_template_makes_disposablevms(tpl):
    with pytest.raises(QubesError, match="not a TemplateVM"):
        dispvm.create(str(tpl), LocalHost(str(tpl)), "disp1x")
