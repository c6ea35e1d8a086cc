"""Model values the tools show and validate (QUBES-XML.md §4, §6, §7, §10, §11, §12)."""
from __future__ import annotations

import pytest

from qubes.errors import (InvalidNameError, InvalidValueError, PropertyNotAvailableError,
                          QubesError, ReadOnlyPropertyError)
from qubes.model.collection import VMCollection
from qubes.model.host import FixedHost


@pytest.fixture
def app(tmp_path):
    app = VMCollection(str(tmp_path), FixedHost(8192, 2, kernels={"3.12"}))
    app.ensure_dom0()
    tpl = app.add_new_vm("TemplateVM", "tpl")
    app.add_new_vm("NetVM", "net", template=tpl)
    app.add_new_vm("ProxyVM", "fw", template=tpl)
    app.add_new_vm("AppVM", "work", template=tpl)
    app.add_new_vm("HVM", "win")
    return app


def test_first_of_kind_defaults(app):
    assert app.default_template.name == "tpl"
    assert app.default_fw_netvm.name == "net" and app.clockvm.name == "net"
    assert app.default_netvm.name == "fw" and app.updatevm.name == "fw"


def test_network_addresses(app):
    work, fw, net = app["work"], app["fw"], app["net"]
    assert (net.netid, fw.netid) == (1, 2)
    assert work.netvm is fw and fw.netvm is net
    assert work.ip == f"10.137.2.{work.qid + 2}"
    assert work.gateway == "10.137.2.1" and work.secondary_dns == "10.137.2.254"
    assert fw.gateway_address == "10.137.2.1" and fw.gateway == "10.137.1.1"
    assert net.ip is None and app.dom0.ip == "10.137.0.2"


def test_ip_quirks_of_the_formula(app):
    work = app["work"]
    work.set_raw("qid", 252)
    assert work.ip.endswith(".254")  # same as the secondary DNS (QUBES-XML.md §10)
    work.set_raw("qid", 253)
    assert work.ip.endswith(".2")


def test_mac_defaults(app):
    assert app["work"].mac == "00:16:3E:5E:6C:%02X" % app["work"].qid
    app["work"].mac = "00:16:3e:aa:bb:cc"
    assert app["work"].mac == "00:16:3E:AA:BB:CC" and not app["work"].is_default("mac")
    del app["work"].mac
    assert app["work"].is_default("mac")


def test_host_derived_defaults(app):
    work, win = app["work"], app["win"]
    assert work.vcpus == 2
    assert work.maxmem == min(8192 // 2, 10 * 400)
    assert win.memory == 512 and win.default_maxmem() == 512


@pytest.mark.parametrize("prop,value,reason", [
    ("memory", "9000", "This host has only 8192 MB of RAM"),
    ("vcpus", "3", "This host has only 2 cpus"),
    ("vcpus", "0", "vcpus must be a positive integer"),
    ("kernel", "4.0", "Kernel version 4.0 not installed"),
    ("mac", "00:16:3E:5E:6C", "is not a MAC address"),
    ("label", "pink", "no such label 'pink'"),
    ("netvm", "work", "VM 'work' is not a NetVM"),
    ("netvm", "nosuch", "no such VM: 'nosuch'"),
])
def test_validation_at_set_time(app, prop, value, reason):
    with pytest.raises(InvalidValueError) as info:
        app["work"].set_prop(prop, value)
    assert reason in str(info.value)
    assert str(info.value).startswith(f"Invalid value for {prop}: ")


def test_netvm_loop_refused(app):
    assert app["fw"].netvm is app["net"]
    with pytest.raises(InvalidValueError, match="loop"):
        app["fw"].set_prop("netvm", "fw")


def test_availability_per_class(app):
    assert not app["win"].has_property("kernel")
    assert not app["net"].has_property("netvm")
    assert not app["tpl"].has_property("template")
    assert not app.dom0.has_property("name")
    assert app["win"].has_property("drive") and not app["work"].has_property("drive")
    with pytest.raises(PropertyNotAvailableError):
        app["win"].set_prop("kernel", "3.12")
    with pytest.raises(ReadOnlyPropertyError):
        app["work"].qid = 7


def test_template_rules(app):
    app.add_new_vm("AppVM", "alone")
    with pytest.raises(InvalidValueError, match="Cannot set template for standalone VM"):
        app["alone"].set_prop("template", "tpl")
    with pytest.raises(InvalidValueError, match="needs a TemplateVM"):
        app["work"].set_prop("template", "win")
    with pytest.raises(QubesError, match="Template VM cannot be based on another template"):
        app.add_new_vm("TemplateVM", "t2", template="tpl")


@pytest.mark.parametrize("name,rule", [("_", "start with a letter"), ("1abc", "start with"),
                                       ("fooßbar", "not allowed"), ("a" * 32, "at most 31"),
                                       ("True", "reserved")])
def test_name_rules(app, name, rule):
    with pytest.raises(InvalidNameError, match=rule):
        app["work"].name = name
    assert app["work"].name == "work"


def test_set_global_messages(app):
    with pytest.raises(InvalidValueError, match="no such VM: 'nosuch'"):
        app.set_global("updatevm", "nosuch")
    with pytest.raises(InvalidValueError, match="is not a template"):
        app.set_global("default_template", "work")
    app.set_global("default_kernel", "3.12")
    assert app.default_kernel == "3.12" and app["work"].kernel == "3.12"
    app.set_global("clockvm", "none")
    assert app.clockvm is None


def test_remove_clears_references(app):
    app["work"].set_prop("netvm", "net")
    app.set_global("updatevm", "fw")
    app.remove(app["fw"])
    assert app.updatevm is None and app.default_netvm is None
    assert app["work"].netvm is app["net"]
    with pytest.raises(QubesError, match="Please remove those VMs first"):
        app.remove(app["tpl"])
