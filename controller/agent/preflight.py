"""Start-up checks of the node environment, each failing with a message that says what to fix.

The agent calls require() before it compiles anything: missing kernel headers, a missing bpf
filesystem, missing capabilities, a too small RLIMIT_MEMLOCK on old kernels or a missing bcc
all stop it with one message listing every problem and the exact command or manifest line that
fixes it. `python -m controller.agent.preflight` prints every check.

Kernel headers are searched in this order (find_kernel_headers):
  1. /lib/modules/$(uname -r)/build (+ source): what bcc uses by itself (bare hosts, install.sh);
  2. the host's headers mounted by deploy/daemonset.yaml under $VETHGUARD_HOST_ROOT (/host):
     /host/lib/modules/$(uname -r)/build, its absolute symlink re-rooted under /host;
  3. packaged headers in /usr/src (the image's linux-headers-amd64 or -arm64): Debian splits them into
     linux-headers-<v>-<arch> (generated, config) and linux-headers-<v>-common (the rest).
The programs include UAPI headers only, so any recent kernel's headers compile them.
use_kernel_headers() points bcc at cases 2 and 3 through BCC_KERNEL_SOURCE: bcc takes one
directory there, so a split pair is merged into a symlink tree under /run/vethguard.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.core import programs
from controller.core.errors import VethguardError

BPFFS = "/sys/fs/bpf"
HOST_ROOT_ENV = "VETHGUARD_HOST_ROOT"
DEFAULT_HOST_ROOT = "/host"
MERGED_HEADERS_ROOT = Path("/run/vethguard/kernel-headers")

# Files whose presence makes a header set complete for bcc: kconfig.h is force-included into
# every compile, autoconf.h is what it includes (generated per build, hence the split).
KCONFIG_H = Path("include/linux/kconfig.h")
AUTOCONF_H = Path("include/generated/autoconf.h")

# Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK instead of the memory cgroup.
MEMCG_ACCOUNTING = (5, 11)
# The programs use the BPF ring buffer and the agent relies on CAP_BPF: both arrived in 5.8.
MIN_KERNEL = (5, 8)


@dataclass(frozen=True)
class Capability:
    name: str  # as written in a securityContext (without CAP_)
    bit: int
    why: str


CAP_NET_ADMIN = Capability("NET_ADMIN", 12, "load SCHED_CLS programs and add clsact/tc filters on pod veths")
CAP_SYS_ADMIN = Capability(
    "SYS_ADMIN",
    21,
    "bcc 0.26 reopens pinned maps by id (BPF_MAP_GET_FD_BY_ID), which the kernel allows only with "
    "CAP_SYS_ADMIN: without it every restart that compiles (an upgrade, other flags) fails",
)
CAP_SYS_RESOURCE = Capability("SYS_RESOURCE", 24, "raise RLIMIT_MEMLOCK for BPF maps (kernels before 5.11)")
CAP_BPF = Capability("BPF", 39, "create, pin and open BPF maps and load programs")


@dataclass(frozen=True)
class Problem:
    """One thing that stops the agent: which check, and what exactly to do about it."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass(frozen=True)
class KernelHeaders:
    """A complete header set. dirs: build first, then the source dir when split (Debian)."""

    dirs: tuple[Path, ...]
    native: bool  # bcc finds it at /lib/modules/<release>/build by itself
    origin: str


def _import_bcc() -> object:
    """Find bcc where the compiling child will import it, without importing it here: the agent
    itself never loads bcc and its LLVM (controller/datapath/build.py compiles in a child)."""
    from controller.datapath.loader import find_bcc

    return find_bcc()


def _host_root_default() -> Path:
    return Path(os.environ.get(HOST_ROOT_ENV, DEFAULT_HOST_ROOT))


@dataclass(frozen=True)
class Environment:
    """Where the checks look. Tests inject a fake tree; the defaults are the real node."""

    proc_self: Path = Path("/proc/self")
    modules_root: Path = Path("/lib/modules")
    usr_src: Path = Path("/usr/src")
    host_root: Path = field(default_factory=_host_root_default)
    bpffs: str = BPFFS
    release: str = field(default_factory=lambda: os.uname().release)
    debian_arch: str = field(default_factory=programs.debian_arch)  # the packaged headers' flavour
    # an operator's explicit choice for bcc, honoured when it holds complete headers
    bcc_kernel_source: str | None = field(default_factory=lambda: os.environ.get("BCC_KERNEL_SOURCE"))
    memlock: Callable[[], tuple[int, int]] = field(
        default=lambda: resource.getrlimit(resource.RLIMIT_MEMLOCK)
    )
    import_bcc: Callable[[], object] = _import_bcc


# ------------------------------------------------------------------------------ kernel version


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise VethguardError(f"cannot read a kernel version from release {release!r}")
    return int(m.group(1)), int(m.group(2))


def check_kernel(env: Environment) -> list[Problem]:
    if kernel_version(env.release) >= MIN_KERNEL:
        return []
    return [
        Problem(
            "kernel",
            f"kernel {env.release} is too old: vethguard needs Linux >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]} "
            "(BPF ring buffer, CAP_BPF). Upgrade the node's kernel.",
        )
    ]


# ------------------------------------------------------------------------------ kernel headers


def resolve_under(root: Path, path: Path, max_links: int = 40) -> Path:
    """Follow the final symlink(s) of path as the host would, keeping absolute targets under root.

    The host's /lib/modules/<r>/build usually links to /usr/src/linux-headers-<r>, which in the
    container is root/usr/src/linux-headers-<r>.
    """
    for _ in range(max_links):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    return path


def _complete(dirs: Sequence[Path]) -> bool:
    have = [d for d in dirs if d.is_dir()]
    return any((d / KCONFIG_H).is_file() for d in have) and any((d / AUTOCONF_H).is_file() for d in have)


def _describe(link: Path, resolved: Path) -> str:
    if link.is_symlink() and not resolved.exists():
        return f"{link} -> {os.readlink(link)}: the link target does not exist"
    if not resolved.exists():
        return f"{link}: does not exist"
    return f"{link}: incomplete (no {KCONFIG_H} or {AUTOCONF_H} in it or its source dir)"


def _modules_dir_headers(modules: Path, release: str, root: Path | None) -> tuple[KernelHeaders | None, str]:
    build = modules / release / "build"
    source = modules / release / "source"
    rb = resolve_under(root, build) if root else build.resolve()
    rs = resolve_under(root, source) if root else source.resolve()
    dirs = tuple(d for d in (rb, rs) if d.is_dir())
    if dirs and _complete(dirs):
        # dict.fromkeys: build and source may be the same dir
        return KernelHeaders(tuple(dict.fromkeys(dirs)), native=root is None, origin=str(build)), ""
    return None, _describe(build, rb)


def _version_key(path: Path) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", path.name)]


def _packaged_headers(usr_src: Path, release: str, arch: str) -> tuple[KernelHeaders | None, str]:
    """Debian's linux-headers-<v>-<arch> + linux-headers-<v>-common, exact release first."""
    exact = usr_src / f"linux-headers-{release}"
    flavoured = sorted(usr_src.glob(f"linux-headers-*-{arch}"), key=_version_key, reverse=True)
    candidates = ([exact] if exact.is_dir() else []) + [p for p in flavoured if p != exact]
    if not candidates:
        return None, f"{usr_src}/linux-headers-*-{arch}: none installed"
    notes = []
    for build in candidates:
        common = build.with_name(re.sub(r"-[a-z0-9]+$", "-common", build.name))
        dirs = tuple(d for d in (build, common) if d.is_dir())
        if _complete(dirs):
            return KernelHeaders(dirs, native=False, origin=str(build)), ""
        if not common.is_dir():
            notes.append(f"{build}: its companion {common} is missing (`apt-get install {common.name}`)")
        else:
            notes.append(f"{build}: incomplete (no {KCONFIG_H} or {AUTOCONF_H})")
    return None, "; ".join(notes)


def find_kernel_headers(env: Environment) -> KernelHeaders | Problem:
    """The header set bcc should compile with, or a Problem naming every place looked at."""
    looked: list[str] = []
    if env.bcc_kernel_source:
        given = Path(env.bcc_kernel_source)
        if _complete([given]):
            return KernelHeaders((given,), native=False, origin="$BCC_KERNEL_SOURCE")
        looked.append(f"$BCC_KERNEL_SOURCE={given}: incomplete (no {KCONFIG_H} or {AUTOCONF_H}), ignored")
    found, why = _modules_dir_headers(env.modules_root, env.release, root=None)
    if found:
        return found
    looked.append(why)
    host_modules = env.host_root / "lib/modules"  # the host's /lib/modules, mounted read-only
    if host_modules.is_dir():
        found, why = _modules_dir_headers(host_modules, env.release, root=env.host_root)
        if found:
            return found
        looked.append(f"{why} (the host's headers, mounted by deploy/daemonset.yaml)")
    found, why = _packaged_headers(env.usr_src, env.release, env.debian_arch)
    if found:
        return found
    looked.append(why)
    build = env.modules_root / env.release / "build"
    return Problem(
        "kernel-headers",
        f"no kernel headers for {env.release}: bcc compiles the tc programs against them. Looked at:\n"
        + "".join(f"    - {w}\n" for w in looked)
        + "  Fix one of:\n"
        f"    - on the node: `apt-get install linux-headers-{env.debian_arch}` (Debian; Ubuntu: "
        f"`apt-get install linux-headers-{env.release}`), then if {build} is still missing:\n"
        f"      `mkdir -p {build.parent} && "
        f"ln -sfn /usr/src/linux-headers-<version>-{env.debian_arch} {build} && "
        f"ln -sfn /usr/src/linux-headers-<version>-common {build.parent / 'source'}` "
        "(scripts/install.sh does both)\n"
        "    - in a container: mount the host's /lib/modules and /usr/src read-only at "
        f"{env.host_root}/lib/modules and {env.host_root}/usr/src (deploy/daemonset.yaml does), or "
        f"install linux-headers-{env.debian_arch} in the image "
        "(the Dockerfile's `scripts/install.sh --image` does)",
    )


def _merge_tree(dst: Path, sources: Sequence[Path]) -> None:
    """A directory of symlinks that overlays sources (first wins for files, dirs are merged)."""
    dst.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[Path]] = {}
    for src in sources:
        for entry in sorted(src.iterdir()):
            entries.setdefault(entry.name, []).append(entry)
    for name, paths in entries.items():
        if len(paths) > 1 and all(p.is_dir() for p in paths):
            _merge_tree(dst / name, paths)
        else:
            (dst / name).symlink_to(paths[0])


def merged_headers_dir(headers: KernelHeaders, root: Path = MERGED_HEADERS_ROOT) -> Path:
    """One directory bcc can take as BCC_KERNEL_SOURCE; built once per header set, atomically."""
    if len(headers.dirs) == 1:
        return headers.dirs[0]
    digest = hashlib.sha256("\0".join(str(d) for d in headers.dirs).encode()).hexdigest()[:12]
    target = root / f"{headers.dirs[0].name}-{digest}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _merge_tree(tmp, headers.dirs)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent agent that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def use_kernel_headers(env: Environment | None = None, merged_root: Path = MERGED_HEADERS_ROOT) -> Path:
    """Find headers and make bcc use them (the agent calls this before it opens the datapath;
    the benchmarks before theirs). Raises with the fix."""
    env = env or Environment()
    found = find_kernel_headers(env)
    if isinstance(found, Problem):
        raise VethguardError(found.message)
    if found.native:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
        return found.dirs[0]
    try:
        merged = merged_headers_dir(found, merged_root)
    except OSError as e:
        raise VethguardError(
            f"kernel headers found at {found.origin} but bcc needs them as one directory and "
            f"building it under {merged_root} failed: {e}. Link them instead: "
            f"`ln -sfn {found.dirs[0]} {env.modules_root / env.release / 'build'}`"
            + (
                f" and `ln -sfn {found.dirs[1]} {env.modules_root / env.release / 'source'}`"
                if len(found.dirs) > 1
                else ""
            )
        ) from e
    os.environ["BCC_KERNEL_SOURCE"] = str(merged)
    return merged


def check_kernel_headers(env: Environment) -> list[Problem]:
    found = find_kernel_headers(env)
    return [found] if isinstance(found, Problem) else []


# ------------------------------------------------------------------------------ bpffs


def check_bpffs(env: Environment) -> list[Problem]:
    mounts_file = env.proc_self / "mounts"
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError as e:
        return [Problem("bpffs", f"cannot read {mounts_file} to find the bpf filesystem: {e}")]
    fstypes = [f[2] for f in (line.split() for line in lines) if len(f) > 2 and f[1] == env.bpffs]
    if "bpf" in fstypes:
        return []
    if fstypes:
        seen = f"{env.bpffs} has {', '.join(fstypes)} mounted"
    else:
        seen = f"nothing is mounted at {env.bpffs}"
    return [
        Problem(
            "bpffs",
            f"no bpf filesystem at {env.bpffs} ({seen}); pinned maps keep enforcement across agent "
            f"restarts and need it. On the node run `mount -t bpf bpf {env.bpffs}`; in Kubernetes "
            f"mount the host's {env.bpffs} into the agent (hostPath volume, mountPropagation: "
            "HostToContainer) after the mount-bpffs init container (deploy/daemonset.yaml)",
        )
    ]


# ------------------------------------------------------------------------------ capabilities


def effective_capabilities(env: Environment) -> int:
    for line in (env.proc_self / "status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise VethguardError(f"no CapEff line in {env.proc_self / 'status'}")


def _has(caps: int, cap: Capability) -> bool:
    return bool(caps >> cap.bit & 1)


def missing_capabilities(caps: int) -> list[Capability]:
    missing = [c for c in (CAP_NET_ADMIN, CAP_SYS_ADMIN) if not _has(caps, c)]
    # bpf(2) accepts CAP_SYS_ADMIN in place of CAP_BPF, so BPF alone is never what is missing
    # while SYS_ADMIN is present.
    if not _has(caps, CAP_BPF) and not _has(caps, CAP_SYS_ADMIN):
        missing.insert(0, CAP_BPF)
    return missing


def check_capabilities(env: Environment) -> list[Problem]:
    try:
        caps = effective_capabilities(env)
    except (OSError, ValueError, VethguardError) as e:
        return [Problem("capabilities", f"cannot read the effective capabilities: {e}")]
    missing = missing_capabilities(caps)
    if not missing:
        return []
    names = ", ".join(c.name for c in missing)
    return [
        Problem(
            "capabilities",
            f"missing capabilities {names} (CapEff {caps:016x}):\n"
            + "".join(f"    - CAP_{c.name}: {c.why}\n" for c in missing)
            + f"  Add them to the agent container: securityContext.capabilities.add: [{names}] "
            "(deploy/daemonset.yaml grants BPF, NET_ADMIN, SYS_ADMIN); outside Kubernetes run as "
            f"root or `docker run {' '.join('--cap-add ' + c.name for c in missing)}`",
        )
    ]


# ------------------------------------------------------------------------------ memlock


def check_memlock(env: Environment) -> list[Problem]:
    if kernel_version(env.release) >= MEMCG_ACCOUNTING:
        return []  # BPF memory is charged to the memory cgroup: RLIMIT_MEMLOCK does not apply
    soft, hard = env.memlock()
    if soft == resource.RLIM_INFINITY or hard == resource.RLIM_INFINITY:
        return []  # bcc raises the soft limit to an infinite hard limit without privileges
    try:
        if _has(effective_capabilities(env), CAP_SYS_RESOURCE):
            return []  # bcc raises both limits when map creation fails with EPERM
    except (OSError, ValueError, VethguardError):
        pass
    return [
        Problem(
            "memlock",
            f"kernel {env.release} (before 5.11) charges BPF maps to RLIMIT_MEMLOCK, which is "
            f"{soft // 1024} KiB (hard {hard // 1024} KiB) here: map creation will fail. Add SYS_RESOURCE "
            "to the agent's securityContext.capabilities.add (bcc then raises the limit), or raise the "
            "runtime's limit (systemd: LimitMEMLOCK=infinity for containerd; docker run --ulimit memlock=-1; "
            "shell: ulimit -l unlimited)",
        )
    ]


# ------------------------------------------------------------------------------ bcc


def check_bcc(env: Environment) -> list[Problem]:
    try:
        env.import_bcc()
    except VethguardError as e:
        return [Problem("bcc", str(e))]
    except (ImportError, OSError) as e:
        return [Problem("bcc", f"bcc is not importable: `apt-get install python3-bpfcc` installs it: {e}")]
    return []


# ------------------------------------------------------------------------------ all checks

CHECKS: tuple[tuple[str, Callable[[Environment], list[Problem]]], ...] = (
    ("kernel", check_kernel),
    ("kernel-headers", check_kernel_headers),
    ("bpffs", check_bpffs),
    ("capabilities", check_capabilities),
    ("memlock", check_memlock),
    ("bcc", check_bcc),
)


def run_checks(env: Environment | None = None) -> list[tuple[str, list[Problem]]]:
    env = env or Environment()
    return [(name, fn(env)) for name, fn in CHECKS]


def check(env: Environment | None = None) -> list[Problem]:
    """Every problem that would stop the agent, in check order; [] when the node is ready."""
    return [p for _, problems in run_checks(env) for p in problems]


def require(env: Environment | None = None) -> None:
    """Raise one VethguardError listing every problem (the agent calls this at start)."""
    problems = check(env)
    if problems:
        raise VethguardError(format_problems(problems))


def format_problems(problems: Iterable[Problem]) -> str:
    items = list(problems)
    return f"{len(items)} problem(s) stop the agent on this node:\n" + "\n".join(
        f"  {i}. {p}" for i, p in enumerate(items, 1)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print each check and what to fix; exit 1 when anything fails."""
    del argv  # no options: the environment is the node's
    env = Environment()
    failed = 0
    for name, problems in run_checks(env):
        if not problems:
            detail = ""
            if name == "kernel-headers":
                with contextlib.suppress(VethguardError):
                    found = find_kernel_headers(env)
                    if isinstance(found, KernelHeaders):
                        detail = f" ({', '.join(str(d) for d in found.dirs)})"
            print(f"ok    {name}{detail}")
        for p in problems:
            failed += 1
            print(f"FAIL  {name}: {p.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
