"""`make demo`: the main job end to end on real files.

Builds a collection (a template, a NetVM, two AppVMs whose sparse images hold
real data at several offsets), lists it, backs it up in format 3, verifies the
backup, restores it into a second base directory, and compares every image's
sha256 and the qvm-ls listings. Where libvirtd runs (make demo starts it as
root), it also builds the tiny template, boots a VM, stops it, and boots its
restored copy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent
PEERS = ROOT.parent / "shared" / "peers"
sys.path.insert(0, str(ROOT / "src"))
from qubes.util.sparse import sparse_sha256  # noqa: E402

PASSPHRASE = "demo passphrase – not a secret"


def sh(*args, base: Path, show: bool = True, quiet: bool = False, online: bool = False) -> str:
    env = dict(os.environ, QUBES_BASE_DIR=str(base), QUBES_OFFLINE="0" if online else "1")
    if show:
        print(f"$ QUBES_BASE_DIR={base.relative_to(ROOT)} {' '.join(map(str, args))}")
    proc = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"demo: {args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    if show and not quiet:
        print(proc.stdout + proc.stderr, end="")
    return proc.stdout


def fill(path: Path, size: int, extents: list[int], label: str) -> None:
    """A sparse image of `size` bytes with 1 MiB of data (half text, half random) at each offset."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
        for offset in extents:
            f.seek(offset)
            text = f"{label} @ {offset}\n".encode() * (512 * 1024 // 32)
            f.write(text[: 512 * 1024] + os.urandom(512 * 1024))


def images(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): sparse_sha256(str(p)) for p in sorted(base.rglob("*.img"))}


def build(base: Path) -> None:
    sh("qvm-init-storage", base=base)
    tpl = base / "vm-templates" / "debian"
    tpl.mkdir(parents=True)
    fill(tpl / "root.img", 4 << 30, [0, 1 << 30, 3 << 30], "debian root")
    sh("qvm-add-template", "-l", "black", "debian", base=base)
    sh("qvm-create", "-n", "-l", "red", "sys-net", base=base)
    sh("qvm-create", "-l", "blue", "work", base=base)
    sh("qvm-create", "-l", "green", "personal", base=base)
    sh("qvm-prefs", "-s", "work", "memory", "800", base=base)
    sh("qvm-prefs", "-s", "work", "netvm", "sys-net", base=base)
    sh("qvm-service", "personal", "-e", "cups", base=base)
    fill(base / "appvms" / "work" / "private.img", 2 << 30, [0, 300 << 20, (2 << 30) - (1 << 20)],
         "work data")
    fill(base / "appvms" / "personal" / "private.img", 2 << 30, [64 << 20, 1 << 30],
         "personal data")


def libvirt_problem() -> str | None:
    proc = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "uri"], capture_output=True,
                          text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or "libvirtd not running")


def real_vm(base: Path) -> str:
    """Build the tiny template, boot a VM on it, leave a file in its private disk, stop it."""
    sh("qvm-template-build", "tiny", base=base)
    sh("qvm-create", "-l", "orange", "-t", "tiny", "tinywork", base=base)
    sh("qvm-start", "tinywork", base=base, online=True)
    sh("qvm-ls", "tinywork", base=base, online=True)
    sh("qvm-run", "-p", "tinywork", "uname -sr; echo 'written inside the VM' > /rw/home/note",
       base=base, online=True)
    sh("qvm-shutdown", "--wait", "tinywork", base=base, online=True)
    sh("qvm-ls", "tinywork", base=base, online=True)
    return "booted, ran a command, shut down"


def main() -> int:
    start = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    first, second, backups = OUT / "qubes-a", OUT / "qubes-b", OUT / "backups"
    backups.mkdir()
    passfile = OUT / "passphrase"
    passfile.write_text(PASSPHRASE + "\n", encoding="utf-8")

    print("== 1. a collection with real data")
    build(first)
    problem = libvirt_problem()
    if problem is None:
        print("== 1b. a real VM (libvirt + QEMU) on the tiny template")
        vm_result = real_vm(first)
    else:
        vm_result = f"skipped: {problem}"
        print(f"== 1b. real VM {vm_result}")
    listing_a = sh("qvm-ls", base=first)
    before = images(first)
    apparent = sum((first / p).stat().st_size for p in before)
    print("== 2. back up (encrypted, compressed) and verify")
    t0 = time.monotonic()
    sh("qvm-backup", "--passphrase-file", passfile, backups, base=first)
    backup_time = time.monotonic() - t0
    backup = next(backups.iterdir())
    sh("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, backup, base=first)
    print("== 3. restore into a second base directory")
    sh("qvm-init-storage", base=second)
    if problem is None:  # backups carry no kernels: install the same one on the target
        print("$ cp -r demo-out/qubes-a/vm-kernels demo-out/qubes-b/")
        shutil.copytree(first / "vm-kernels", second / "vm-kernels")
    t0 = time.monotonic()
    sh("qvm-backup-restore", "--passphrase-file", passfile, backup, base=second)
    restore_time = time.monotonic() - t0
    listing_b = sh("qvm-ls", base=second)
    after = images(second)
    if problem is None:
        print("== 3b. the restored VM boots and still has its file")
        sh("qvm-remove", "tinywork", base=first, online=True)  # one libvirt name space
        sh("qvm-start", "tinywork", base=second, online=True)
        note = sh("qvm-run", "-p", "tinywork", "cat /rw/home/note", base=second, online=True)
        sh("qvm-shutdown", "--wait", "tinywork", base=second, online=True)
        # libvirt is one name space for the host: the demo leaves no domain defined
        sh("qvm-remove", "tinywork", base=second, online=True)
        vm_result += "; restored copy booted with its file" if "inside the VM" in note \
            else "; restored copy LOST its file"
    peer = "not run (../shared/peers absent)"
    if (PEERS / "emergency-restore-v3").exists():
        print("== 4. the same backup through the standard-tools emergency procedure")
        out = OUT / "emergency"
        proc = subprocess.run([PEERS / "emergency-restore-v3", "-q", "-p", passfile, backup, out],
                              capture_output=True, text=True)
        got = sorted(sparse_sha256(str(p)) for p in out.rglob("*.img")) if proc.returncode == 0 else []
        peer = "images identical" if got == sorted(before.values()) else \
            f"FAILED (exit {proc.returncode}) {proc.stderr[-300:]}"
        print(f"emergency-restore-v3: {peer}")
    same_images = before == after
    same_listing = listing_a == listing_b
    print("\n== summary")
    print(f"images:     {len(before)} images, {apparent >> 20} MiB apparent size")
    print(f"backup:     {backup.stat().st_size >> 20} MiB in {backup_time:.1f} s -> {backup.name}")
    print(f"restore:    {restore_time:.1f} s into {second.relative_to(ROOT)}")
    print(f"sha256:     {'all images identical' if same_images else 'DIFFERENT'}")
    print(f"qvm-ls:     {'identical listings' if same_listing else 'DIFFERENT listings'}")
    print(f"real VM:    {vm_result}")
    print(f"peer:       {peer}")
    print(f"total time: {time.monotonic() - start:.1f} s")
    ok = same_images and same_listing and not peer.startswith("FAILED") and "LOST" not in vm_result
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
