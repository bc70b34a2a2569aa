"""A Debian kernel with `vivid` under QEMU (TCG): fetched once, cached, booted per test.

The machines here have no camera and cannot load kernel modules, but an emulated VM
can: it boots Debian's own kernel package with a tiny initramfs (busybox + the 9p and
virtio modules, see tests/vm/init) that mounts the host's root read-only, so the
guest runs the host's Python, mosquitto and this checkout unchanged. The kernel
package (~70 MB) is fetched with `apt-get download` and unpacked into
~/.cache/edged/vm/<package>/ (override: $EDGED_VM_CACHE), where later runs find it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

HERE = Path(__file__).resolve().parent
QEMU = "qemu-system-x86_64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
META_PACKAGE = "linux-image-amd64"
INITRD_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                  "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p")


class VmUnavailable(Exception):
    """This machine cannot run the VM (the message says what is missing)."""


@dataclass
class Kernel:
    """An unpacked kernel package: `root` holds boot/ and lib/modules/<version>/."""

    root: Path
    version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGED_VM_CACHE") or Path.home() / ".cache" / "edged" / "vm")


def missing_tools() -> List[str]:
    """Host programs the VM needs that are not installed (apt packages in brackets)."""
    missing = []
    if not shutil.which(QEMU):
        missing.append(f"{QEMU} (qemu-system-x86)")
    if not find_busybox():
        missing.append("busybox (busybox-static)")
    if not (shutil.which("depmod") or os.access("/usr/sbin/depmod", os.X_OK)):
        missing.append("depmod (kmod)")
    if not shutil.which("v4l2-ctl"):
        missing.append("v4l2-ctl (v4l-utils)")
    return missing


def find_busybox() -> Optional[str]:
    """A statically linked busybox (the initramfs has no libraries)."""
    for path in BUSYBOX_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def kernel_package() -> str:
    """The versioned package linux-image-amd64 depends on, e.g. linux-image-6.1.0-57-amd64
    (as root, the package lists are fetched first if apt has none)."""
    try:
        return _depends_on(META_PACKAGE)
    except VmUnavailable:
        if os.geteuid() != 0:
            raise
    _run(["apt-get", "update", "-qq"])
    return _depends_on(META_PACKAGE)


def _depends_on(meta: str) -> str:
    try:
        out = subprocess.run(["apt-cache", "depends", meta], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VmUnavailable(f"apt-cache cannot tell the kernel package: {exc}") from None
    match = re.search(r"Depends: (linux-image-[\w.+-]+-amd64)\b", out)
    if not match:
        raise VmUnavailable(f"apt-cache knows no {meta} (run apt-get update)")
    return match.group(1)


def cached_kernels() -> List[Path]:
    return sorted(p.parent for p in cache_dir().glob("linux-image-*/ready"))


def prepare_kernel() -> Kernel:
    """The cached kernel for the current package, fetched and unpacked on first use."""
    try:
        package = kernel_package()
    except VmUnavailable:
        cached = cached_kernels()
        if not cached:
            raise
        package = cached[-1].name  # offline: the newest kernel fetched earlier
    folder = cache_dir() / package
    if not (folder / "ready").exists():
        _fetch(package, folder)
    return _load(folder)


def _load(folder: Path) -> Kernel:
    versions = sorted(p.name for p in (folder / "root" / "lib" / "modules").iterdir())
    return Kernel(root=folder / "root", version=versions[-1])


def _fetch(package: str, folder: Path) -> None:
    """apt-get download + dpkg -x + depmod + initramfs, into `folder` atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{package}.", dir=folder.parent))
    try:
        _run(["apt-get", "download", package], cwd=work)
        debs = list(work.glob(f"{package}_*.deb"))
        if not debs:
            raise VmUnavailable(f"apt-get download {package} left no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")])
        debs[0].unlink()
        kernel = _load(work)
        depmod = shutil.which("depmod") or "/usr/sbin/depmod"
        _run([depmod, "-b", str(kernel.root), kernel.version])
        (work / "ready").write_text(package + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_initrd(kernel: Kernel, dest: Path) -> Path:
    """busybox, tests/vm/init and the 9p/virtio modules as an uncompressed cpio
    (built for every run: it takes well under a second and follows edits to init)."""
    busybox = find_busybox()
    if busybox is None:
        raise VmUnavailable("busybox is not installed (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        (tree / "bin").mkdir()
        (tree / "modules").mkdir()
        shutil.copy2(busybox, tree / "bin" / "busybox")
        shutil.copy2(HERE / "init", tree / "init")
        (tree / "init").chmod(0o755)
        modules = kernel.root / "lib" / "modules" / kernel.version / "kernel"
        for name in INITRD_MODULES:
            found = list(modules.rglob(f"{name}.ko"))
            if not found:
                raise VmUnavailable(f"kernel {kernel.version} has no module {name}.ko")
            shutil.copy2(found[0], tree / "modules" / f"{name}.ko")
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        with open(dest, "wb") as out:
            subprocess.run([busybox, "cpio", "-o", "-H", "newc"], input="\n".join(names).encode(),
                           cwd=tree, stdout=out, stderr=subprocess.DEVNULL, check=True)
    return dest


def _run(args: Sequence[str], cwd: Optional[Path] = None) -> None:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise VmUnavailable(f"{' '.join(args)} failed: {tail[0]}")


def qemu_command(kernel: Kernel, initrd: Path, out_dir: Path, script: Path, env: dict,
                 memory_mb: int = 3072, cpus: int = 2) -> List[str]:
    """The VM: host root read-only over 9p (tag hostroot), `out_dir` writable (tag out);
    `env` becomes the guest script's environment through the kernel command line."""
    words = [f"{k}={v}" for k, v in {"VM_SCRIPT": script, **env}.items()]
    if any(" " in w or '"' in w for w in words):
        raise VmUnavailable(f"paths with spaces cannot go on the kernel command line: {words}")
    return [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(memory_mb),
            "-smp", str(cpus), "-nographic", "-no-reboot", "-kernel", str(kernel.vmlinuz),
            "-initrd", str(initrd),
            "-append", " ".join(["console=ttyS0", "quiet", "panic=-1", *words]),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=none",
            "-nic", "none"]
