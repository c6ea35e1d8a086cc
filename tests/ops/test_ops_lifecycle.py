"""qubes.ops: clone, remove and rename through the store (TOOLS.md §7, QUBES-XML.md §11)."""
from __future__ import annotations

import os

import pytest

from qubes.errors import QubesError, StorageError
from qubes.model.host import FixedHost
from qubes.ops.clone import clone_vm
from qubes.ops.remove import remove_vm, rename_vm
from qubes.store.access import init_storage, modify_collection, read_collection
from qubes.vmm.base import DomainInfo, DomainState
from qubes.vmm.offline import OfflineHypervisor

HOST = FixedHost()


class RunningHypervisor(OfflineHypervisor):
    offline = False

    def __init__(self, *running):
        self.running = set(running)

    def domain_states(self, names):
        return {n: DomainInfo(DomainState.RUNNING if n in self.running else DomainState.HALTED)
                for n in names}


@pytest.fixture
def base(tmp_path):
    base = str(tmp_path)
    init_storage(base)
    with modify_collection(base, HOST) as app:
        tpl = app.add_new_vm("TemplateVM", "tpl")
        app.add_new_vm("AppVM", "work", template=tpl)
    for sub, files in (("vm-templates/tpl", ("root.img", "private.img")),
                       ("appvms/work", ("private.img",))):
        os.makedirs(os.path.join(base, sub))
        for name in files:
            with open(os.path.join(base, sub, name), "wb") as f:
                f.truncate(1 << 20)
    return base


def test_clone_and_remove(base):
    clone_vm(base, HOST, OfflineHypervisor(), "work", "work2")
    assert os.path.isfile(os.path.join(base, "appvms", "work2", "private.img"))
    with read_collection(base, HOST) as app:
        assert app["work2"].template is app["tpl"]
    assert remove_vm(base, HOST, OfflineHypervisor(), "work2") == []
    assert not os.path.exists(os.path.join(base, "appvms", "work2"))


def test_clone_of_vm_without_directory_is_a_storage_error(base):
    import shutil
    shutil.rmtree(os.path.join(base, "appvms", "work"))
    with pytest.raises(StorageError, match="cannot read the files of 'work'"):
        clone_vm(base, HOST, OfflineHypervisor(), "work", "w3")
    with read_collection(base, HOST) as app:
        assert app.get("w3") is None


def test_running_vm_is_not_removed(base):
    with pytest.raises(QubesError, match="running"):
        remove_vm(base, HOST, RunningHypervisor("work"), "work")
    with read_collection(base, HOST) as app:
        assert app.get("work") is not None


def test_rename_moves_directory(base):
    with modify_collection(base, HOST) as app:
        rename_vm(app, OfflineHypervisor(), app["work"], "renamed")
    assert os.path.isdir(os.path.join(base, "appvms", "renamed"))
    with read_collection(base, HOST) as app:
        assert app["renamed"].dir_path == os.path.join(base, "appvms", "renamed")


def test_rename_refused_for_rpm_and_running(base):
    with pytest.raises(QubesError, match="running"):
        with modify_collection(base, HOST) as app:
            rename_vm(app, RunningHypervisor("work"), app["work"], "x")
    with pytest.raises(QubesError, match="RPM"):
        with modify_collection(base, HOST) as app:
            app["tpl"].installed_by_rpm = True
            rename_vm(app, OfflineHypervisor(), app["tpl"], "x")
    with read_collection(base, HOST) as app:
        assert [vm.name for vm in app] == ["dom0", "tpl", "work"]
