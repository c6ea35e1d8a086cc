"""Networks on real VMs (issue 4 §8; CASES.md B104-B107)."""
from __future__ import annotations

import json
import subprocess


def prefs(q, vm: str, prop: str) -> str:
    return q.out("qvm-prefs", "-g", vm, prop).strip()


def pings(q, vm: str, address: str) -> bool:
    return q("qvm-run", vm, f"ping -c 1 -W 3 {address}", check=False).returncode == 0


def netvm(q, fresh, prefix="net") -> str:
    name = fresh(prefix)
    q("qvm-create", "--class", "NetVM", "-t", "tiny", "-l", "red", name)
    return name


def client(q, fresh, net: str) -> str:
    name = fresh("c")
    q("qvm-create", "-t", "tiny", "-l", "green", name)
    q("qvm-prefs", "-s", name, "netvm", net)
    return name


def test_a_client_starts_its_netvm_and_reaches_its_gateway(q, fresh):
    net = netvm(q, fresh)
    app = client(q, fresh, net)
    out = q.out("qvm-start", app)
    assert out.index(f"{net}: started") < out.index(f"{app}: started")
    ip = prefs(q, app, "ip")
    gateway = prefs(q, app, "gateway")
    assert q.out("qvm-run", "-p", app, "ip -4 addr show").count(ip) == 1
    assert pings(q, app, gateway)
    dump = subprocess.run(["virsh", "-c", "qemu:///system", "domiflist", app],
                          capture_output=True, text=True).stdout
    assert prefs(q, app, "mac").split()[0].lower() in dump.lower()


def test_a_netvm_with_running_clients_is_shut_down_only_after_them(q, fresh):
    """B104."""
    net = netvm(q, fresh)
    app = client(q, fresh, net)
    q("qvm-start", app)
    proc = q("qvm-shutdown", net, check=False)
    assert proc.returncode == 1
    assert f"ERROR: {net} has running clients: {app} (shut them down first or use --force)" \
        .encode() in proc.stderr
    q("qvm-shutdown", "--wait", net, app)  # one command: the client goes first
    states = {r["name"]: r["state"] for r in json.loads(q.out("qvm-ls", "--format", "json"))}
    assert states[net] == states[app] == "Halted"


def states(q) -> dict[str, str]:
    return {r["name"]: r["state"] for r in json.loads(q.out("qvm-ls", "--format", "json"))}


def test_shutdown_all_exclude_and_force_with_a_netvm_and_its_clients(q, fresh):
    """B104: --exclude keeps VMs up, --force takes a netvm from under its client,
    --all --wait shuts down clients before netvms and never refuses."""
    net = netvm(q, fresh)
    c1, c2 = client(q, fresh, net), client(q, fresh, net)
    q("qvm-start", c1)  # starts net first
    q("qvm-start", c2)
    q("qvm-shutdown", "--all", "--wait", "--exclude", net, "--exclude", c2)
    now = states(q)
    assert (now[c1], now[net], now[c2]) == ("Halted", "Running", "Running")
    proc = q("qvm-shutdown", "--wait", "--force", net)
    assert proc.stderr == b""
    now = states(q)
    assert (now[net], now[c2]) == ("Halted", "Running")
    q("qvm-start", net)
    proc = q("qvm-shutdown", "--all", "--wait")
    assert b"running clients" not in proc.stderr and b"killing" not in proc.stderr
    now = states(q)
    assert (now[net], now[c1], now[c2]) == ("Halted",) * 3


def test_changing_the_netvm_of_a_running_vm_moves_it(q, fresh):
    """B107: the VM keeps running and reaches the new netvm; B106: the old one may be down."""
    net1, net2 = netvm(q, fresh, "na"), netvm(q, fresh, "nb")
    app = client(q, fresh, net1)
    q("qvm-start", net2)
    q("qvm-start", app)
    q("qvm-kill", net1)
    q("qvm-prefs", "-s", app, "netvm", net2)
    assert prefs(q, app, "netvm") == net2
    assert pings(q, app, prefs(q, app, "gateway"))
    q("qvm-start", net1)
    q("qvm-prefs", "-s", app, "netvm", net1)
    assert pings(q, app, prefs(q, app, "gateway"))


def test_moving_to_a_halted_netvm_is_refused_and_nothing_changes(q, fresh):
    net1, net2 = netvm(q, fresh, "na"), netvm(q, fresh, "nb")
    app = client(q, fresh, net1)
    q("qvm-start", app)
    proc = q("qvm-prefs", "-s", app, "netvm", net2, check=False)
    assert proc.returncode == 1
    assert f"the new netvm '{net2}' is not running; start it first".encode() in proc.stderr
    assert prefs(q, app, "netvm") == net1
    assert pings(q, app, prefs(q, app, "gateway"))


def test_a_killed_netvm_comes_back_for_its_running_client(q, fresh):
    """B105: no 'already exists', and the client reaches it again."""
    net = netvm(q, fresh)
    app = client(q, fresh, net)
    q("qvm-start", app)
    q("qvm-kill", net)
    assert not pings(q, app, prefs(q, app, "gateway"))
    q("qvm-start", net)
    assert pings(q, app, prefs(q, app, "gateway"))


def test_a_running_proxyvm_moves_to_another_netvm_with_its_client_up(q, fresh):
    """B107: the ProxyVM and its client keep running; the proxy gets an interface on the
    new netvm's network, with the address it has there, and its client still reaches it."""
    from qubes.ops.network import network_of
    from qubes.store.access import read_collection
    from qubes.model.host import FixedHost
    net1, net2 = netvm(q, fresh, "na"), netvm(q, fresh, "nb")
    fw = fresh("fw")
    q("qvm-create", "--class", "ProxyVM", "-t", "tiny", "-l", "green", fw)
    q("qvm-prefs", "-s", fw, "netvm", net1)
    app = client(q, fresh, fw)
    q("qvm-start", app)  # starts net1, then fw
    q("qvm-start", net2)
    old_ip = prefs(q, fw, "ip")
    q("qvm-prefs", "-s", fw, "netvm", net2)
    now = states(q)
    assert (now[fw], now[app], now[net1], now[net2]) == ("Running",) * 4
    assert prefs(q, fw, "netvm") == net2
    new_ip, gateway = prefs(q, fw, "ip"), prefs(q, fw, "gateway")
    assert new_ip != old_ip
    with read_collection(str(q.base), FixedHost()) as coll:
        networks = {name: network_of(str(q.base), coll[name])[0] for name in (net1, net2, fw)}
    iflist = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "domiflist", fw],
                            capture_output=True, text=True, check=True).stdout
    attached = [line.split()[2] for line in iflist.splitlines() if line.strip()]
    assert sorted(attached) == sorted([networks[net2], networks[fw]])
    assert new_ip in q.out("qvm-run", "-p", fw, "ip -4 addr show")
    assert old_ip not in q.out("qvm-run", "-p", fw, "ip -4 addr show")
    assert pings(q, fw, gateway)
    assert pings(q, app, prefs(q, app, "gateway"))  # the client's side of fw is untouched


def networks() -> list[str]:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "net-list", "--all",
                           "--name"], capture_output=True, text=True).stdout.split()


def bridge_exists(name: str) -> bool:
    import os
    return os.path.isdir(f"/sys/class/net/{name}")


def test_a_removed_netvm_takes_its_network_and_bridge_and_repair_finds_leftovers(q, fresh):
    """Nothing of a netvm stays on the host after qvm-remove; a network left behind (a
    netvm removed in offline mode, a crash) is reported by qvm-check --consistency and
    removed by --repair."""
    from qubes.ops.network import network_of
    from qubes.store.access import read_collection
    from qubes.model.host import FixedHost
    nets = [netvm(q, fresh) for _ in range(2)]
    for net in nets:
        q("qvm-start", net)
        q("qvm-shutdown", "--wait", net)
    with read_collection(str(q.base), FixedHost()) as app:
        own = [network_of(str(q.base), app[net]) for net in nets]
    for network, bridge in own:
        assert network in networks() and bridge_exists(bridge)
    q("qvm-remove", nets[0])
    assert own[0][0] not in networks() and not bridge_exists(own[0][1])
    from tests.conftest import run
    run("qvm-remove", nets[1], env=dict(q.env, QUBES_OFFLINE="1"))  # libvirt not told
    proc = q("qvm-check", "--consistency", check=False)
    assert proc.returncode == 1 and own[1][0].encode() in proc.stdout + proc.stderr
    q("qvm-check", "--consistency", "--repair")
    assert own[1][0] not in networks() and not bridge_exists(own[1][1])
