"""`make bench`: backup and restore throughput and peak memory, ours vs a shell pipeline.

Corpus: one sparse image (apparent 2 GiB) holding 300 MiB of data, half random
and half compressible. Baseline, in the same run: `tar --sparse -c | gzip |
openssl enc -aes-256-cbc -md MD5 | split` plus `openssl dgst` per chunk, and
its reverse. MB/s are data bytes (not apparent size) per wall-clock second.
Not a test: numbers only.
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


def corpus(base: Path) -> int:
    env = dict(os.environ, QUBES_BASE_DIR=str(base), QUBES_OFFLINE="1")
    for args in (["qvm-init-storage"], ["qvm-create", "--class", "TemplateVM", "-l", "black", "t"],
                 ["qvm-create", "-l", "red", "work"]):
        subprocess.run([str(BIN / args[0]), *args[1:]], env=env, check=True)
    img = base / "appvms" / "work" / "private.img"
    data = 0
    with open(img, "r+b") as f:
        for i in range(30):  # 30 x 10 MiB extents spread over 2 GiB
            f.seek(i * 64 * MiB)
            block = os.urandom(10 * MiB) if i % 2 else (b"compressible text line %d\n" % i) * (10 * MiB // 26)
            f.write(block[: 10 * MiB])
            data += 10 * MiB
    return data


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    base = OUT / "qubes"
    data = corpus(base)
    (OUT / "pass").write_text(PASS + "\n")
    env = dict(os.environ, QUBES_BASE_DIR=str(base), QUBES_OFFLINE="1")
    rows = []

    ours = OUT / "ours.bin"
    t, rss = timed([str(BIN / "qvm-backup"), "-q", "--passphrase-file", str(OUT / "pass"),
                    str(ours), "work"], env=env)
    rows.append(("backup", "qvm-backup", t, rss))

    pipe_dir = OUT / "pipe"
    pipe_dir.mkdir()
    img_dir = base / "appvms" / "work"
    pipeline = (f"set -o pipefail; tar --sparse -C {img_dir} -cf - private.img | gzip -6 | "
                f"openssl enc -aes-256-cbc -md MD5 -pass file:{OUT / 'pass'} | "
                f"split -b 100M -d -a 3 - {pipe_dir}/private.img. && "
                f"for f in {pipe_dir}/private.img.*; do openssl dgst -sha512 -hmac '{PASS}' "
                f"< $f > $f.hmac; done")
    t, rss = timed(pipeline, shell=True)
    rows.append(("backup", "tar|gzip|openssl|split", t, rss))

    target = OUT / "restored"
    env2 = dict(env, QUBES_BASE_DIR=str(target))
    subprocess.run([str(BIN / "qvm-init-storage")], env=env2, check=True)
    subprocess.run([str(BIN / "qvm-create"), "--class", "TemplateVM", "-l", "black", "t"],
                   env=env2, check=True)
    t, rss = timed([str(BIN / "qvm-backup-restore"), "-q", "--passphrase-file",
                    str(OUT / "pass"), str(ours)], env=env2)
    rows.append(("restore", "qvm-backup-restore", t, rss))

    out = OUT / "pipe-out"
    out.mkdir()
    reverse = (f"set -o pipefail; for f in {pipe_dir}/private.img.[0-9][0-9][0-9]; do "
               f"openssl dgst -sha512 -hmac '{PASS}' < $f > /dev/null; done; "
               f"cat {pipe_dir}/private.img.[0-9][0-9][0-9] | openssl enc -d -aes-256-cbc -md MD5 "
               f"-pass file:{OUT / 'pass'} | gzip -d | tar --sparse -C {out} -xf -")
    t, rss = timed(reverse, shell=True)
    rows.append(("restore", "openssl|gzip -d|tar", t, rss))

    print(f"corpus: 2048 MiB apparent, {data // MiB} MiB data (half random)")
    print(f"{'op':<8} {'tool':<24} {'seconds':>8} {'MB/s':>8} {'peak MiB':>9}")
    for op, tool, t, rss in rows:
        print(f"{op:<8} {tool:<24} {t:8.2f} {data / t / 1e6:8.1f} {rss:9d}")
    for op in ("backup", "restore"):
        mine, base_row = [r for r in rows if r[0] == op]
        print(f"{op}: ours / pipeline = {base_row[2] / mine[2]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
