#!/bin/bash
# Install what `make test` and `make demo` need on a fresh Debian/Ubuntu host,
# idempotently: system packages (only when run as root and only the missing
# ones), then the project's virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real VMs (VMM.md §7): QEMU, libvirtd without libvirt-daemon-system (it
# drags in systemd), busybox-static and e2fsprogs for the tiny template.
APT_PACKAGES=(tar gzip bzip2 xz-utils openssl scrypt coreutils
              libvirt-dev pkg-config gcc python3 python3-dev python3-venv
              qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu
              libvirt-clients busybox-static e2fsprogs)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: WARNING: missing packages ${missing[*]} (run as root to install them)" >&2
    fi
fi

# Python 3.11 or newer: the first one found of $PYTHON, python3, python3.13 ... python3.11.
PY=
for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "setup: ERROR: Python 3.11 or newer with its venv module is needed" \
         "(on Debian/Ubuntu: apt-get install python3.11 python3.11-venv)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "setup: installing the package and its test extras into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    # libvirt-python compiles against libvirt-dev; the offline tools work without it.
    if ! .venv/bin/pip install -q -e '.[test,vmm]'; then
        echo "setup: WARNING: libvirt-python did not build; installing without it" >&2
        .venv/bin/pip install -q -e '.[test]'
    fi
    rm -f .venv/.stamp-*
    touch "$stamp"
fi

bash scripts/start-libvirtd.sh
