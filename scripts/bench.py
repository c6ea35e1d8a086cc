"""`make bench`: backup and restore throughput and peak memory, ours vs a shell pipeline.

Corpora (generated here):
  sparse  - a 2 GiB sparse image holding 300 MiB of data, half random, half text
  random  - a 500 MiB image of random bytes
  home    - a home directory of 20,000 small files (backed up with --dom0-home)
  huge    - a 10 GiB sparse image holding 1 MiB of data (backup time only)
Baseline, in the same run: `tar --sparse -c | gzip -6 | openssl enc -aes-256-cbc
-md MD5 | split -b 100M` plus `openssl dgst -sha512 -hmac` per chunk, and its
reverse (HMAC check, then `cat | openssl enc -d | gzip -d | tar -x`).
MB/s = data bytes (not apparent size) per wall-clock second, median of 3 runs
alternating with the pipeline's. Numbers, not a test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
BIN = Path(sys.executable).parent
MiB = 1 << 20
PASS = "bench passphrase"


def timed(cmd, env=None, shell=False) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of the command and its children."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, shell=shell, executable="/bin/bash" if shell else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {cmd} failed: {proc.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss // 1024


def qenv(base: Path) -> dict:
    return dict(os.environ, QUBES_BASE_DIR=str(base), QUBES_OFFLINE="1")


def q(base: Path, *args) -> None:
    subprocess.run([str(BIN / args[0]), *map(str, args[1:])], env=qenv(base), check=True,
                   stdout=subprocess.DEVNULL)


def new_collection(base: Path) -> None:
    q(base, "qvm-init-storage")
    q(base, "qvm-create", "--class", "TemplateVM", "-l", "black", "t")


def fill_sparse(img: Path) -> int:
    with open(img, "r+b") as f:
        for i in range(30):  # 30 x 10 MiB extents spread over 2 GiB
            f.seek(i * 64 * MiB)
            text = (b"compressible text line %d\n" % i) * (10 * MiB // 26 + 1)
            f.write(os.urandom(10 * MiB) if i % 2 else text[: 10 * MiB])
    return 300 * MiB


def fill_random(img: Path) -> int:
    with open(img, "r+b") as f:
        f.truncate(500 * MiB)
        for i in range(50):
            f.write(os.urandom(10 * MiB))
    return 500 * MiB


def make_home(home: Path) -> int:
    total = 0
    for d in range(100):
        sub = home / f"dir{d:03d}"
        sub.mkdir(parents=True)
        for i in range(200):
            data = (f"file {d}/{i}\n" * (20 + i % 50)).encode()
            (sub / f"f{i:03d}.txt").write_bytes(data)
            total += len(data)
    return total


def pipeline(src_dir: Path, name: str, out: Path) -> str:
    return (f"set -o pipefail; tar --sparse -C {src_dir} -cf - {name} | gzip -6 | "
            f"openssl enc -aes-256-cbc -md MD5 -pass file:{OUT / 'pass'} | "
            f"split -b 100M -d -a 3 - {out}/item. && "
            f"for f in {out}/item.[0-9][0-9][0-9]; do openssl dgst -sha512 -hmac '{PASS}' "
            f"< $f > $f.hmac; done")


def reverse(chunks: Path, dest: Path) -> str:
    return (f"set -o pipefail; for f in {chunks}/item.[0-9][0-9][0-9]; do "
            f"openssl dgst -sha512 -hmac '{PASS}' < $f > /dev/null; done; "
            f"cat {chunks}/item.[0-9][0-9][0-9] | openssl enc -d -aes-256-cbc -md MD5 "
            f"-pass file:{OUT / 'pass'} | gzip -d | tar --sparse -C {dest} -xf -")


REPEATS = 3


def _fresh(path: Path, run: int) -> Path:
    """A new path for each run; nothing is deleted until every run is over.

    Why: on ext4, creating files for a while after many were deleted is several
    times slower (the allocator scans recently deleted inodes), which would
    charge whichever tool runs next for the previous run's clean-up.
    """
    return path.with_name(f"{path.name}-{run}")


def _median(runs: list) -> tuple[float, int]:
    times = sorted(t for t, _ in runs)
    return times[len(times) // 2], max(rss for _, rss in runs)


def run_corpus(name: str, data: int, base: Path, vm_args: list, src: Path, member: str,
               home_env: dict | None = None) -> list:
    """Ours and the pipeline alternately, REPEATS times each; the median time counts.

    Why alternate: this machine's disk speed drifts by several times within a
    minute, and back-to-back pairs see the same drift.
    """
    backup, chunks = OUT / f"{name}.bin", OUT / f"{name}-chunks"
    env = dict(qenv(base), **(home_env or {}))
    ours, theirs = [], []
    os.sync()
    for run in range(REPEATS):
        ours.append(timed([str(BIN / "qvm-backup"), "-q", "--progress", "none",
                           "--passphrase-file", str(OUT / "pass"), str(_fresh(backup, run)),
                           *vm_args], env=env))
        _fresh(chunks, run).mkdir()
        theirs.append(timed(pipeline(src, member, _fresh(chunks, run)), shell=True))
    rows = [(name, "backup", "qvm-backup", data, *_median(ours)),
            (name, "backup", "tar|gzip|openssl|split", data, *_median(theirs))]
    target, homes, dest = OUT / f"{name}-restored", OUT / f"{name}-homes", OUT / f"{name}-pipe-out"
    ours, theirs = [], []
    for run in range(REPEATS):
        new_collection(_fresh(target, run))
        _fresh(homes, run).mkdir()
        _fresh(dest, run).mkdir()
    os.sync()
    for run in range(REPEATS):
        ours.append(timed([str(BIN / "qvm-backup-restore"), "-q", "--progress", "none",
                           "--passphrase-file", str(OUT / "pass"),
                           "--dom0-home-dir", str(_fresh(homes, run)),
                           "--ignore-username-mismatch", str(_fresh(backup, 0))],
                          env=qenv(_fresh(target, run))))
        theirs.append(timed(reverse(_fresh(chunks, 0), _fresh(dest, run)), shell=True))
    rows += [(name, "restore", "qvm-backup-restore", data, *_median(ours)),
             (name, "restore", "openssl|gzip -d|tar", data, *_median(theirs))]
    return rows


def main() -> int:
    """Corpora to run may be chosen with BENCH_CORPORA=home,random (default: all)."""
    chosen = os.environ.get("BENCH_CORPORA", "sparse,random,home,huge").split(",")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    (OUT / "pass").write_text(PASS + "\n")
    try:
        rows, huge = run_chosen(chosen)
        report(rows, huge)
    finally:
        shutil.rmtree(OUT, ignore_errors=True)  # only now: see _fresh
    return 0


def run_chosen(chosen: list[str]) -> tuple[list, tuple | None]:
    rows, huge = [], None
    if "sparse" in chosen:
        base = OUT / "sparse"
        new_collection(base)
        q(base, "qvm-create", "-l", "red", "work")
        data = fill_sparse(base / "appvms/work/private.img")
        rows += run_corpus("sparse", data, base, ["work"], base / "appvms/work", "private.img")
    if "random" in chosen:
        base = OUT / "random"
        new_collection(base)
        q(base, "qvm-create", "-l", "red", "rnd")
        data = fill_random(base / "appvms/rnd/private.img")
        rows += run_corpus("random", data, base, ["rnd"], base / "appvms/rnd", "private.img")
    if "home" in chosen:
        base = OUT / "home"
        new_collection(base)
        home = OUT / "home-src" / "user"
        data = make_home(home)
        rows += run_corpus("home", data, base, ["--dom0-home", "-x", "t"], home.parent, "user",
                           home_env={"HOME": str(home)})
    if "huge" in chosen:
        base = OUT / "huge"
        new_collection(base)
        q(base, "qvm-create", "-l", "red", "big")
        img = base / "appvms/big/private.img"
        os.truncate(img, 10 << 30)
        with open(img, "r+b") as f:
            f.seek(5 << 30)
            f.write(os.urandom(MiB))
        huge = timed([str(BIN / "qvm-backup"), "-q", "--passphrase-file",
                      str(OUT / "pass"), str(OUT / "huge.bin"), "big"], env=qenv(base))
    return rows, huge


def report(rows: list, huge: tuple | None) -> None:
    print(f"{'corpus':<8} {'op':<8} {'tool':<24} {'seconds':>8} {'MB/s':>8} {'peak MiB':>9}")
    for corpus, op, tool, data, t, rss in rows:
        print(f"{corpus:<8} {op:<8} {tool:<24} {t:8.2f} {data / t / 1e6:8.1f} {rss:9d}")
    print()
    for corpus in sorted({r[0] for r in rows}, key=[r[0] for r in rows].index):
        for op in ("backup", "restore"):
            mine, base_row = [r for r in rows if r[0] == corpus and r[1] == op]
            print(f"{corpus:<8} {op:<8} ours / pipeline = {base_row[4] / mine[4]:.2f}x")
    if huge is not None:
        print(f"huge     backup   10 GiB sparse, 1 MiB data: {huge[0]:.2f} s (whole command), "
              f"peak {huge[1]} MiB")


if __name__ == "__main__":
    raise SystemExit(main())
