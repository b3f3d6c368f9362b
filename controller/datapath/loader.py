"""Compile and load the tc programs once per node with bcc, maps pinned under the node's dir.

bcc compiles against the kernel headers of /lib/modules/$(uname -r)/build, or of
$BCC_KERNEL_SOURCE. Checking the node (headers, bpffs, capabilities, bcc) and pointing bcc at
headers found elsewhere is controller.agent.preflight's job, done before a Datapath is made
(the agent: preflight.require() and preflight.use_kernel_headers()); this module only says
clearly when bcc itself is missing, or its compile or the kernel's verifier fails.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from controller.core.errors import VethguardError
from controller.datapath import abi, bpfsys
from controller.datapath.bpf_sources import bpf_source_dir

log = logging.getLogger(__name__)

# The programs the agent attaches. Each is also pinned, as <pin dir>/prog_<name>, so tools (bpftool,
# `vethguard` debug commands, vethguard-cni) can tell which program a filter runs or attach it.
PROGRAMS = ("from_pod", "to_pod", "to_uplink", "from_uplink")
# The programs to_pod reaches by tail call, by their slot in vg_tail (bpf/lib/structs.h): compiled,
# loaded and pinned with each build, never attached; Datapath puts them into vg_tail.
TAIL_PROGRAMS = {abi.VG_TAIL_JUDGE: "to_pod_judge", abi.VG_TAIL_TO_POD: "to_pod_judged"}
BUILD_PROGRAMS = PROGRAMS + tuple(TAIL_PROGRAMS.values())  # what a build compiles and pins

# Extra compiler flags from the environment (e.g. -DVG_MAX_POLICY=64 for a tiny map,
# -DVG_UPGRADE_MARKER=2 for a program with different code in upgrade tests).
ENV_EXTRA_CFLAGS = "VETHGUARD_EXTRA_CFLAGS"
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

# Expected (key_size, value_size) of every pinned map; an older layout must not be reused
# (replacing_incompatible).
EXPECTED_LAYOUT: dict[str, tuple[int, int]] = {
    "vg_endpoints": (4, ctypes.sizeof(abi.EndpointInfo)),
    "vg_ipcache4": (ctypes.sizeof(abi.Ipcache4Key), ctypes.sizeof(abi.IpcacheValue)),
    "vg_ipcache6": (ctypes.sizeof(abi.Ipcache6Key), ctypes.sizeof(abi.IpcacheValue)),
    "vg_policy": (ctypes.sizeof(abi.PolicyKey), ctypes.sizeof(abi.PolicyValue)),
    "vg_slots": (4, 4),
    "vg_svc": (ctypes.sizeof(abi.SvcKey), ctypes.sizeof(abi.SvcValue)),
    "vg_local": (ctypes.sizeof(abi.LocalKey), ctypes.sizeof(abi.LocalValue)),
    "vg_hosteps": (4, ctypes.sizeof(abi.HostepInfo)),
    "vg_failsafe": (ctypes.sizeof(abi.FailsafeKey), 1),
    "vg_ct": (ctypes.sizeof(abi.CtKey), ctypes.sizeof(abi.CtValue)),
    "vg_frag": (ctypes.sizeof(abi.FragKey), ctypes.sizeof(abi.FragValue)),
    "vg_config": (4, ctypes.sizeof(abi.Config)),
    "vg_counters": (ctypes.sizeof(abi.CounterKey), ctypes.sizeof(abi.CounterValue)),
    "vg_est_counters": (4, ctypes.sizeof(abi.CounterValue)),
    "vg_evrate": (4, ctypes.sizeof(abi.EvrateState)),
    "vg_evlost": (4, ctypes.sizeof(abi.EvlostState)),
    "vg_clock": (4, ctypes.sizeof(abi.ClockCache)),
    "vg_tail": (4, 4),  # prog array: slot -> program fd (id when read)
    "vg_dns_learned": (ctypes.sizeof(abi.DnsLearnedKey), ctypes.sizeof(abi.DnsLearnedValue)),
    "vg_dns_names": (4, ctypes.sizeof(abi.DnsName)),
    "vg_dns_state": (4, ctypes.sizeof(abi.DnsState)),
    "vg_dns_scratch": (4, ctypes.sizeof(abi.DnsHeld)),
}


_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
_BCC_MISSING = (
    "bcc is not importable: install it with `apt-get install python3-bpfcc` (looked in sys.path and {})"
)


def import_bcc() -> ModuleType:
    """Debian ships bcc for the system python only; a venv reaches it through dist-packages.

    Only the compiling child (controller.datapath.build) and benchmarks call this: importing bcc
    maps libbcc and its LLVM (~30 MB) for the life of the process."""
    try:
        import bcc
    except ImportError:
        if _DIST_PACKAGES not in sys.path:
            sys.path.append(_DIST_PACKAGES)
        try:
            import bcc
        except ImportError as e:
            raise VethguardError(f"{_BCC_MISSING.format(_DIST_PACKAGES)}: {e}") from e
    return bcc


def find_bcc() -> Path:
    """The directory of the bcc package, found as import_bcc() would import it, without importing it
    (the agent checks and names the bcc its compiling child will use, and stays free of LLVM)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        if _DIST_PACKAGES not in sys.path:
            sys.path.append(_DIST_PACKAGES)
        spec = importlib.util.find_spec("bcc")
    if spec is None or spec.origin is None:
        raise VethguardError(_BCC_MISSING.format(_DIST_PACKAGES))
    return Path(spec.origin).parent


_VERSION_RE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)


def bcc_version() -> str:
    """bcc's __version__ as its bcc/version.py states it (read, not imported); "unknown" when bcc
    is missing or the file says nothing."""
    try:
        text = (find_bcc() / "version.py").read_text()
    except (VethguardError, OSError):
        return "unknown"
    m = _VERSION_RE.search(text)
    return m.group(1) if m else "unknown"


def pin_dir_for(node: str, pin_root: str) -> Path:
    if not _NODE_RE.match(node):
        raise VethguardError(f"node name {node!r} cannot name a pin directory (use [A-Za-z0-9._-])")
    return Path(pin_root) / node


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline_sources(entry: Path, search: Path) -> str:
    """Paste local #include "..." files into one text.

    bcc only rewrites map method calls (vg_ct.lookup(...)) in the main file, not in included
    headers, so the lib/*.h helpers must become part of the main file. #line directives keep
    compiler and verifier messages pointing at the real file and line.
    """
    seen: set[Path] = set()
    out: list[str] = []

    def visit(path: Path) -> None:
        path = path.resolve()
        if path in seen:
            return
        seen.add(path)
        out.append(f'#line 1 "{path}"')
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _INCLUDE_RE.match(line)
            if not m:
                out.append(line)
                continue
            target = path.parent / m.group(1)
            if not target.is_file():
                target = search / m.group(1)
            if not target.is_file():
                raise VethguardError(f"{path}:{n}: include {m.group(1)!r} not found")
            visit(target)
            out.append(f'#line {n + 1} "{path}"')

    visit(entry)
    return "\n".join(out) + "\n"


def env_cflags() -> tuple[str, ...]:
    """Compiler flags from $VETHGUARD_EXTRA_CFLAGS (shell-quoted words)."""
    return tuple(shlex.split(os.environ.get(ENV_EXTRA_CFLAGS, "")))


REPLACED_PREFIX = "replaced_"  # a pin moved aside while a load replaces it (bpffs rejects dots)


def incompatible_pins(pin_dir: Path) -> dict[str, str]:
    """Pinned maps whose key or value size differs from this build's: name -> what differs.

    A different max_entries is not a layout change: the pinned map (and its size) is kept.
    """
    out = {}
    for name, (ks, vs) in EXPECTED_LAYOUT.items():
        path = pin_dir / name
        if not path.exists():
            continue
        m = bpfsys.BpfMap.open_pinned(str(path))
        try:
            if (m.key_size, m.value_size) != (ks, vs):
                out[name] = f"key/value sizes {m.key_size}/{m.value_size}, this version needs {ks}/{vs}"
        finally:
            m.close()
    return out


def recover_set_aside(pin_dir: Path) -> None:
    """Pins a load moved aside and did not finish with (the process died): back in place if
    nothing replaced them, else removed (a program still using the old map keeps it alive)."""
    for aside in pin_dir.glob(f"{REPLACED_PREFIX}*"):
        final = pin_dir / aside.name.removeprefix(REPLACED_PREFIX)
        if final.exists():
            aside.unlink()
        else:
            os.rename(aside, final)


@contextmanager
def replacing_incompatible(pin_dir: Path) -> Iterator[tuple[str, ...]]:
    """Move the pins of maps with another layout aside while the body compiles and loads (bcc
    then creates and pins new, empty maps under their names); remove them when it succeeds, put
    them back when it fails (the previous version's pins stay as they were). Yields the names.

    Upgrades keep every compatible pinned map (that is what keeps conntrack and enforcement across
    the swap); a map whose layout changed cannot be reused (silent corruption), and is not
    migrated: the new one is filled by the agent's first sync, from the cluster. The programs
    already attached hold their own references to the old maps and keep enforcing with them;
    Datapath re-attaches them only after that first sync (no moment runs on an empty map). A
    replaced vg_ct forgets the connections it tracked: they are judged again as new flows.
    """
    recover_set_aside(pin_dir)
    replaced = incompatible_pins(pin_dir)
    moved = []
    try:
        for name, why in sorted(replaced.items()):
            os.rename(pin_dir / name, pin_dir / f"{REPLACED_PREFIX}{name}")
            moved.append(name)
            log.warning("pinned map %s has %s (map layout changed): replacing it with a new map", name, why)
        yield tuple(moved)
    except BaseException:
        for name in moved:
            (pin_dir / name).unlink(missing_ok=True)  # a new map the failed load pinned, if any
            os.rename(pin_dir / f"{REPLACED_PREFIX}{name}", pin_dir / name)
        raise
    for name in moved:
        (pin_dir / f"{REPLACED_PREFIX}{name}").unlink()


def pin_programs(pin_dir: Path, prog_fds: dict[str, int]) -> None:
    """Pin (or re-pin) the attached programs as <pin_dir>/prog_<name>.

    Pinned under a temporary name first, then renamed over the old pin, so a reader never
    finds the path missing. The old program stays alive as long as a filter uses it.
    """
    for name in PROGRAMS:
        final = pin_dir / f"prog_{name}"
        tmp = pin_dir / f"tmp_prog_{name}_{os.getpid()}"  # bpffs rejects names with dots
        tmp.unlink(missing_ok=True)
        try:
            bpfsys.obj_pin(prog_fds[name], str(tmp))
            os.rename(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise VethguardError(f"cannot pin program {name} at {final}: {e}") from e


_malloc_trim: Any = None


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the kernel (glibc `malloc_trim(0)`).

    glibc keeps freed memory in its arenas; after a compile pass of a large cluster that is the
    freed model of the previous pass (and after an in-process bcc compile, as benchmarks do,
    most of LLVM's working heap, ~30 MB). Trimming returns whole free pages of every arena
    (threads included) to the kernel, so they stop counting in the agent's RSS. Costs a few ms
    (a walk of the free lists). Returns False where there is no glibc (nothing to do).
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


def program_cflags(pin_dir: Path, extra_cflags: tuple[str, ...], src_dir: Path) -> list[str]:
    """The full compiler flags of a compile against the maps pinned in pin_dir: the pin dir, the
    include dir, `extra_cflags`, then $VETHGUARD_EXTRA_CFLAGS."""
    return [
        f'-DPIN_DIR="{pin_dir}"',
        f"-I{src_dir}",
        "-Wno-unused-function",
        *extra_cflags,
        *env_cflags(),
    ]


def compile_programs(
    entry: str,
    pin_dir: Path,
    names: tuple[str, ...],
    extra_cflags: tuple[str, ...] = (),
    src_dir: Path | None = None,
) -> tuple[Any, dict[str, int]]:
    """Compile <src_dir>/<entry> (default: this version's bpf/) with bcc against the maps pinned in
    pin_dir; load `names` as SCHED_CLS. (Another src_dir: another version's sources, which a
    benchmark compares with this one on the same maps.)

    Returns (the bcc.BPF object, name -> program fd). The caller cleans the object up.
    """
    bcc = import_bcc()
    src_dir = src_dir or bpf_source_dir()
    text = inline_sources(src_dir / entry, src_dir)
    cflags = program_cflags(pin_dir, extra_cflags, src_dir)
    if len(cflags) > 3:
        log.info("compiling with extra flags: %s", " ".join(cflags[3:]))
    try:
        b = bcc.BPF(text=text.encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception with the compiler output on stderr
        raise VethguardError(f"compiling {entry} failed (see compiler output above): {e}") from e
    try:
        fds = {name: b.load_func(name.encode(), bcc.BPF.SCHED_CLS).fd for name in names}
    except Exception as e:
        b.cleanup()
        raise VethguardError(f"the kernel refused the programs of {entry} (verifier log above): {e}") from e
    return b, fds
