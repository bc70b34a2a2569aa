#!/usr/bin/env bash
# Creates .venv with CPython 3.10 (the newest Python with an x86 paddlelite wheel),
# installs the system packages the tests need when run as root, and installs edged.
# Usage: scripts/setup.sh [EXTRAS]    e.g. scripts/setup.sh build,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-build,dev}"
# qemu-system-x86, busybox-static, kmod: the VM test's vivid camera (tests/test_camera_vm.py);
# v4l-utils: v4l2-ctl, which edged uses for camera formats and controls.
apt_packages=(mosquitto mosquitto-clients libsystemd-dev pkg-config
              qemu-system-x86 busybox-static kmod v4l-utils)

missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing system packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing system packages (${missing[*]}); install them with:" >&2
        echo "  sudo apt-get install ${missing[*]}" >&2
    fi
fi

find_python() {
    if command -v python3.10 >/dev/null && python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        command -v python3.10; return
    fi
    if command -v pyenv >/dev/null; then
        PYENV_VERSION=3.10.13 pyenv which python 2>/dev/null && return
    fi
    return 1
}

if [ ! -x .venv/bin/python ]; then
    py=$(find_python) || {
        echo "setup: CPython 3.10 not found; install it (e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10-venv')" >&2
        exit 1
    }
    echo "setup: creating .venv with $py"
    "$py" -m venv .venv
fi

stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edged[$extras] into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
