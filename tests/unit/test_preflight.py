"""controller.agent.preflight: every check against a fake /proc and filesystem (no root), then the
real node (root): the checks pass, the image's header fallback compiles the real programs with
/lib/modules hidden, and the DaemonSet's capability set loads, pins, attaches and restarts."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from controller.agent import preflight
from controller.agent.preflight import Environment, KernelHeaders, Problem
from controller.core.errors import VethguardError

RELEASE = "6.18.44-test"
ALL_CAPS = "000001ffffffffff"
REPO = Path(__file__).resolve().parents[2]
# subprocesses search headers themselves, whatever this process's environment says
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}


def cap_mask(*caps: preflight.Capability) -> str:
    return f"{sum(1 << c.bit for c in caps):016x}"


@dataclass
class FakeNode:
    """A node's /proc/self, /lib/modules, /usr/src and /host under one temporary directory."""

    root: Path
    cap_eff: str = ALL_CAPS
    mounts: list[str] = field(default_factory=lambda: ["bpf /sys/fs/bpf bpf rw,relatime 0 0"])
    release: str = RELEASE
    memlock: tuple[int, int] = (8 * 1024 * 1024, 8 * 1024 * 1024)
    bcc_error: Exception | None = None
    arch: str = "amd64"

    def env(self) -> Environment:
        proc = self.root / "proc/self"
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "status").write_text(f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{self.cap_eff}\n")
        (proc / "mounts").write_text("".join(m + "\n" for m in ["proc /proc proc rw 0 0", *self.mounts]))
        for d in ("lib/modules", "usr/src"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

        def import_bcc() -> object:
            if self.bcc_error:
                raise self.bcc_error
            return object()

        return Environment(
            bcc_kernel_source=None,
            proc_self=proc,
            modules_root=self.root / "lib/modules",
            usr_src=self.root / "usr/src",
            host_root=self.root / "host",
            release=self.release,
            debian_arch=self.arch,
            memlock=lambda: self.memlock,
            import_bcc=import_bcc,
        )

    def debian_headers(self, base: Path, version: str = "6.1.0-56", common: bool = True) -> Path:
        """Debian's split: -amd64 (-arm64) holds generated headers, -common the rest (kconfig.h)."""
        amd64 = base / f"linux-headers-{version}-{self.arch}"
        (amd64 / "include/generated").mkdir(parents=True)
        (amd64 / "include/generated/autoconf.h").write_text("#define CONFIG_BPF 1\n")
        (amd64 / "arch/x86/include/generated").mkdir(parents=True)
        (amd64 / "arch/x86/include/generated/gen.h").write_text("/* amd64 */\n")
        if common:
            c = base / f"linux-headers-{version}-common"
            (c / "include/linux").mkdir(parents=True)
            (c / "include/linux/kconfig.h").write_text("#include <generated/autoconf.h>\n")
            (c / "arch/x86/include/uapi").mkdir(parents=True)
            (c / "arch/x86/include/uapi/asm.h").write_text("/* common */\n")
        return amd64

    def link_modules(self, modules: Path, build: str, source: str | None = None) -> None:
        (modules / self.release).mkdir(parents=True, exist_ok=True)
        (modules / self.release / "build").symlink_to(build)
        if source:
            (modules / self.release / "source").symlink_to(source)


@pytest.fixture(autouse=True)
def _keep_bcc_kernel_source() -> Iterator[None]:
    """use_kernel_headers() sets BCC_KERNEL_SOURCE for this process: put it back after each test,
    so later tests in the same run (the kernel tests compile with bcc) see the real environment.
    monkeypatch.delenv of an absent variable records nothing to undo, hence this fixture."""
    saved = os.environ.get("BCC_KERNEL_SOURCE")
    yield
    if saved is None:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
    else:
        os.environ["BCC_KERNEL_SOURCE"] = saved


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path)


# ------------------------------------------------------------------------------ kernel headers


def test_linked_build_and_source_are_used_natively(node: FakeNode) -> None:
    env = node.env()
    amd64 = node.debian_headers(env.usr_src)
    node.link_modules(env.modules_root, str(amd64), str(amd64.with_name("linux-headers-6.1.0-56-common")))
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert found.native
    assert found.dirs == (amd64, amd64.with_name("linux-headers-6.1.0-56-common"))
    assert preflight.check_kernel_headers(env) == []


def test_without_a_modules_link_the_packaged_debian_headers_are_the_fallback(node: FakeNode) -> None:
    env = node.env()
    node.debian_headers(env.usr_src, "6.1.0-40")
    newest = node.debian_headers(env.usr_src, "6.1.0-56")
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert not found.native
    assert found.dirs == (newest, newest.with_name("linux-headers-6.1.0-56-common"))


def test_on_arm64_the_packaged_arm64_headers_are_the_fallback_and_amd64_ones_are_not(
    node: FakeNode,
) -> None:
    node.arch = "arm64"
    env = node.env()
    arm64 = node.debian_headers(env.usr_src, "6.1.0-40")
    node.arch = "amd64"
    node.debian_headers(env.usr_src, "6.1.0-56")  # newer, but another architecture's
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert found.dirs == (arm64, arm64.with_name("linux-headers-6.1.0-40-common"))


def test_on_arm64_without_headers_the_fix_names_linux_headers_arm64(node: FakeNode) -> None:
    node.arch = "arm64"
    found = preflight.find_kernel_headers(node.env())
    assert isinstance(found, Problem)
    assert "linux-headers-*-arm64: none installed" in found.message
    assert "apt-get install linux-headers-arm64" in found.message


def test_headers_named_after_the_running_release_win_over_newer_ones(node: FakeNode) -> None:
    env = node.env()
    node.debian_headers(env.usr_src, "6.1.0-99")
    exact = env.usr_src / f"linux-headers-{RELEASE}"
    (exact / "include/linux").mkdir(parents=True)
    (exact / "include/linux/kconfig.h").write_text("")
    (exact / "include/generated").mkdir(parents=True)
    (exact / "include/generated/autoconf.h").write_text("")
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert found.dirs == (exact,)


def test_the_hosts_headers_are_found_through_its_absolute_build_link_under_the_host_root(
    node: FakeNode,
) -> None:
    env = node.env()
    node.debian_headers(env.usr_src, "6.1.0-10")  # the image's own: must lose to the host's
    host_src = env.host_root / "usr/src"
    host_amd64 = node.debian_headers(host_src, "6.1.0-77")
    node.link_modules(
        env.host_root / "lib/modules",
        "/usr/src/linux-headers-6.1.0-77-amd64",  # as on the host: absolute
        "/usr/src/linux-headers-6.1.0-77-common",
    )
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert not found.native
    assert found.dirs == (host_amd64, host_src / "linux-headers-6.1.0-77-common")


def test_a_host_build_link_without_the_hosts_usr_src_is_reported_and_the_image_headers_used(
    node: FakeNode,
) -> None:
    env = node.env()
    image = node.debian_headers(env.usr_src)
    node.link_modules(env.host_root / "lib/modules", "/usr/src/linux-headers-6.1.0-77-amd64")
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    assert found.dirs[0] == image


def test_no_headers_anywhere_says_where_it_looked_which_package_and_which_links(node: FakeNode) -> None:
    env = node.env()
    node.link_modules(env.modules_root, "/usr/src/linux-headers-gone-amd64")
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, Problem)
    build = env.modules_root / RELEASE / "build"
    assert f"{build} -> /usr/src/linux-headers-gone-amd64: the link target does not exist" in found.message
    assert f"{env.usr_src}/linux-headers-*-amd64: none installed" in found.message
    assert "apt-get install linux-headers-amd64" in found.message
    assert f"ln -sfn /usr/src/linux-headers-<version>-amd64 {build}" in found.message
    assert f"ln -sfn /usr/src/linux-headers-<version>-common {build.parent / 'source'}" in found.message


def test_an_amd64_header_dir_without_its_common_half_names_the_missing_package(node: FakeNode) -> None:
    env = node.env()
    node.debian_headers(env.usr_src, "6.1.0-56", common=False)
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, Problem)
    assert "apt-get install linux-headers-6.1.0-56-common" in found.message


def test_a_split_header_pair_is_merged_into_one_tree_for_bcc(node: FakeNode, tmp_path: Path) -> None:
    env = node.env()
    amd64 = node.debian_headers(env.usr_src)
    found = preflight.find_kernel_headers(env)
    assert isinstance(found, KernelHeaders)
    merged = preflight.merged_headers_dir(found, root=tmp_path / "merged")
    assert (merged / "include/linux/kconfig.h").read_text() == "#include <generated/autoconf.h>\n"
    assert (merged / "include/generated/autoconf.h").is_file()
    assert (merged / "arch/x86/include/generated/gen.h").is_file()
    assert (merged / "arch/x86/include/uapi/asm.h").is_file()
    assert (merged / "include/generated").resolve() == (amd64 / "include/generated").resolve()
    # built once: a second agent start reuses it
    assert preflight.merged_headers_dir(found, root=tmp_path / "merged") == merged
    assert [p.name for p in (tmp_path / "merged").iterdir()] == [merged.name]


def test_use_kernel_headers_points_bcc_at_a_fallback_and_leaves_native_headers_alone(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/stale")
    env = node.env()
    amd64 = node.debian_headers(env.usr_src)
    merged = preflight.use_kernel_headers(env, merged_root=tmp_path / "merged")
    assert os.environ["BCC_KERNEL_SOURCE"] == str(merged)
    assert merged.parent == tmp_path / "merged"

    node.link_modules(env.modules_root, str(amd64), str(amd64.with_name("linux-headers-6.1.0-56-common")))
    assert preflight.use_kernel_headers(env, merged_root=tmp_path / "merged") == amd64
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_an_operators_complete_bcc_kernel_source_is_honoured_and_an_incomplete_one_reported(
    node: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)  # use_kernel_headers sets it: undone after
    env = node.env()
    own = tmp_path / "own-headers"
    (own / "include/linux").mkdir(parents=True)
    (own / "include/linux/kconfig.h").write_text("")
    found = preflight.find_kernel_headers(replace(env, bcc_kernel_source=str(own)))
    assert isinstance(found, Problem)
    assert f"$BCC_KERNEL_SOURCE={own}: incomplete" in found.message
    (own / "include/generated").mkdir()
    (own / "include/generated/autoconf.h").write_text("")
    found = preflight.find_kernel_headers(replace(env, bcc_kernel_source=str(own)))
    assert isinstance(found, KernelHeaders)
    assert found.dirs == (own,)
    assert preflight.use_kernel_headers(replace(env, bcc_kernel_source=str(own)), tmp_path / "m") == own


def test_use_kernel_headers_raises_the_problem_message_when_nothing_is_found(node: FakeNode) -> None:
    with pytest.raises(VethguardError, match="apt-get install linux-headers-amd64"):
        preflight.use_kernel_headers(node.env())


# ------------------------------------------------------------------------------ bpffs


def test_a_mounted_bpffs_passes(node: FakeNode) -> None:
    assert preflight.check_bpffs(node.env()) == []


def test_no_bpffs_gives_the_mount_command_and_the_daemonset_volume(node: FakeNode) -> None:
    node.mounts = []
    [problem] = preflight.check_bpffs(node.env())
    assert "nothing is mounted at /sys/fs/bpf" in problem.message
    assert "mount -t bpf bpf /sys/fs/bpf" in problem.message
    assert "mountPropagation: HostToContainer" in problem.message


def test_another_filesystem_at_the_bpffs_path_is_named(node: FakeNode) -> None:
    node.mounts = ["sysfs /sys/fs/bpf sysfs ro 0 0"]
    [problem] = preflight.check_bpffs(node.env())
    assert "/sys/fs/bpf has sysfs mounted" in problem.message


# ------------------------------------------------------------------------------ capabilities


def test_the_daemonset_capability_set_passes(node: FakeNode) -> None:
    node.cap_eff = cap_mask(preflight.CAP_BPF, preflight.CAP_NET_ADMIN, preflight.CAP_SYS_ADMIN)
    assert preflight.check_capabilities(node.env()) == []


def test_sys_admin_stands_in_for_bpf(node: FakeNode) -> None:
    node.cap_eff = cap_mask(preflight.CAP_NET_ADMIN, preflight.CAP_SYS_ADMIN)
    assert preflight.check_capabilities(node.env()) == []


def test_missing_capabilities_are_named_with_the_line_to_add(node: FakeNode) -> None:
    node.cap_eff = cap_mask(preflight.CAP_BPF)
    [problem] = preflight.check_capabilities(node.env())
    assert "missing capabilities NET_ADMIN, SYS_ADMIN" in problem.message
    assert "securityContext.capabilities.add: [NET_ADMIN, SYS_ADMIN]" in problem.message
    assert "BPF_MAP_GET_FD_BY_ID" in problem.message
    assert "--cap-add NET_ADMIN --cap-add SYS_ADMIN" in problem.message


def test_no_capabilities_at_all_names_bpf_too(node: FakeNode) -> None:
    node.cap_eff = "0000000000000000"
    [problem] = preflight.check_capabilities(node.env())
    assert "missing capabilities BPF, NET_ADMIN, SYS_ADMIN" in problem.message


def test_an_unreadable_status_file_is_a_problem_not_a_crash(node: FakeNode) -> None:
    env = node.env()
    (env.proc_self / "status").write_text("Name:\tx\n")
    [problem] = preflight.check_capabilities(env)
    assert "cannot read the effective capabilities" in problem.message


# ------------------------------------------------------------------------------ memlock, kernel, bcc


def test_old_kernels_with_a_small_memlock_limit_are_told_to_add_sys_resource(node: FakeNode) -> None:
    node.release = "5.10.0-28-amd64"
    node.cap_eff = cap_mask(preflight.CAP_BPF, preflight.CAP_NET_ADMIN, preflight.CAP_SYS_ADMIN)
    [problem] = preflight.check_memlock(node.env())
    assert "8192 KiB" in problem.message
    assert "SYS_RESOURCE" in problem.message
    assert "LimitMEMLOCK=infinity" in problem.message


@pytest.mark.parametrize(
    ("release", "limits", "extra_cap"),
    [
        ("6.1.0-56-amd64", (65536, 65536), False),  # memcg accounting: the limit does not apply
        ("5.10.0-28-amd64", (resource.RLIM_INFINITY, resource.RLIM_INFINITY), False),
        ("5.10.0-28-amd64", (65536, resource.RLIM_INFINITY), False),  # raisable without privilege
        ("5.10.0-28-amd64", (65536, 65536), True),  # CAP_SYS_RESOURCE: bcc raises it
    ],
)
def test_memlock_is_fine_when_it_does_not_apply_or_can_be_raised(
    node: FakeNode, release: str, limits: tuple[int, int], extra_cap: bool
) -> None:
    node.release = release
    node.memlock = limits
    caps = [preflight.CAP_BPF, preflight.CAP_NET_ADMIN, preflight.CAP_SYS_ADMIN]
    node.cap_eff = cap_mask(*caps, *([preflight.CAP_SYS_RESOURCE] if extra_cap else []))
    assert preflight.check_memlock(node.env()) == []


def test_a_kernel_without_ring_buffers_is_refused(node: FakeNode) -> None:
    node.release = "5.4.0-150-generic"
    [problem] = preflight.check_kernel(node.env())
    assert "needs Linux >= 5.8" in problem.message


def test_a_missing_bcc_names_the_debian_package(node: FakeNode) -> None:
    node.bcc_error = ImportError("No module named 'bcc'")
    [problem] = preflight.check_bcc(node.env())
    assert "apt-get install python3-bpfcc" in problem.message


# ------------------------------------------------------------------------------ check / require


def test_check_lists_every_problem_in_order_and_require_raises_them_all(node: FakeNode) -> None:
    node.cap_eff = "0000000000000000"
    node.mounts = []
    node.bcc_error = ImportError("nope")
    env = node.env()
    assert [p.check for p in preflight.check(env)] == ["kernel-headers", "bpffs", "capabilities", "bcc"]
    with pytest.raises(VethguardError) as info:
        preflight.require(env)
    text = str(info.value)
    assert text.startswith("4 problem(s) stop the agent on this node:")
    for n, check in enumerate(["kernel-headers", "bpffs", "capabilities", "bcc"], 1):
        assert f"  {n}. [{check}]" in text


def test_a_ready_fake_node_has_no_problems(node: FakeNode) -> None:
    env = node.env()
    node.debian_headers(env.usr_src)
    assert preflight.check(env) == []
    preflight.require(env)


def test_main_prints_one_line_per_check(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node.mounts = []
    env = node.env()
    node.debian_headers(env.usr_src)
    monkeypatch.setattr(preflight, "Environment", lambda: env)
    assert preflight.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1].rstrip(":") for line in out] == [name for name, _ in preflight.CHECKS]
    assert out[1].startswith("ok    kernel-headers (")
    assert out[2].startswith("FAIL  bpffs: no bpf filesystem at /sys/fs/bpf")


# ------------------------------------------------------------------------------ the real node (root)


@pytest.mark.root
def test_this_node_passes_every_check_and_the_module_prints_them() -> None:
    assert preflight.check() == []
    out = subprocess.run(
        [sys.executable, "-m", "controller.agent.preflight"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [
        ["ok", name] for name, _ in preflight.CHECKS
    ]


COMPILE = textwrap.dedent(
    """
    import os, sys
    from controller.agent import preflight
    from controller.datapath import loader
    from controller.datapath.bpf_sources import bpf_source_dir
    headers = preflight.use_kernel_headers()
    bcc = loader.import_bcc()
    src = bpf_source_dir()
    text = loader.inline_sources(src / "vethguard.c", src)
    # bcc's front end creates and pins the maps while compiling: a throwaway pin dir
    pin_dir = sys.argv[1]
    os.makedirs(pin_dir)
    bcc.BPF(text=text.encode(), cflags=[f'-DPIN_DIR="{pin_dir}"', f"-I{src}", "-Wno-unused-function"])
    print("compiled with", headers, os.environ.get("BCC_KERNEL_SOURCE"))
    """
)


@pytest.mark.root
@pytest.mark.bcc
@pytest.mark.slow
def test_with_lib_modules_hidden_the_packaged_headers_compile_the_real_programs() -> None:
    # A private mount namespace: the tmpfs over /lib/modules and /run (where the merged tree
    # goes) exists only for this child and vanishes with it; the host keeps its own.
    script = 'mount -t tmpfs none /lib/modules && mount -t tmpfs none /run && exec "$0" -c "$1" "$2"'
    pin_dir = f"/sys/fs/bpf/vgthdr{os.getpid()}{uuid.uuid4().hex[:6]}"
    try:
        out = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                sys.executable,
                COMPILE,
                pin_dir,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=300,
            env=CLEAN_ENV,
        )
    finally:
        subprocess.run(["rm", "-rf", pin_dir], check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "compiled with /run/vethguard/kernel-headers/linux-headers-" in out.stdout


CAPS_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from controller.agent import preflight
    from controller.datapath.node import Datapath
    pin_root, node = sys.argv[1:3]
    problems = [p.check for p in preflight.check()]
    print("problems", problems, flush=True)
    dp = Datapath(node=node, pin_root=pin_root)
    print("loaded", flush=True)
    ifindex = socket.if_nametoindex("vgtcap0")
    dp.attach(ifindex)
    assert dp.attached(ifindex)
    dp.open_events(lambda e: None)
    dp.poll_events(0)
    print("attached", flush=True)
    dp.close()
    """
)


@dataclass
class CapLab:
    netns: str
    pin_root: str

    def run(self, caps: str, extra_cflags: str = "") -> subprocess.CompletedProcess[str]:
        """The script in the netns as root with only `caps` (setpriv: bounding and inheritable);
        `extra_cflags`: $VETHGUARD_EXTRA_CFLAGS (another build: the restart must compile)."""
        return subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "--",
                "setpriv",
                "--inh-caps=-all",
                f"--bounding-set=-all,{caps}",
                "--",
                sys.executable,
                "-c",
                CAPS_SCRIPT,
                self.pin_root,
                "n1",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=300,
            env={**CLEAN_ENV, "VETHGUARD_EXTRA_CFLAGS": extra_cflags},
        )


@pytest.fixture
def cap_lab() -> Iterator[CapLab]:
    suffix = f"{os.getpid()}{uuid.uuid4().hex[:4]}"
    lab = CapLab(netns=f"vgtcap{suffix}", pin_root=f"/sys/fs/bpf/vgtcap{suffix}")
    try:
        subprocess.run(["ip", "netns", "add", lab.netns], check=True)
        ip = ["ip", "-n", lab.netns]
        subprocess.run([*ip, "link", "add", "vgtcap0", "type", "veth", "peer", "name", "vgtcap1"], check=True)
        subprocess.run([*ip, "link", "set", "vgtcap0", "up"], check=True)
        yield lab
    finally:
        subprocess.run(["ip", "netns", "del", lab.netns], check=False)
        subprocess.run(["rm", "-rf", lab.pin_root], check=False)


@pytest.mark.root
@pytest.mark.bcc
@pytest.mark.slow
def test_the_daemonset_capabilities_load_pin_attach_and_restart_and_sys_admin_is_what_a_recompile_needs(
    cap_lab: CapLab,
) -> None:
    daemonset = "+bpf,+net_admin,+sys_admin"  # deploy/daemonset.yaml (test_deploy checks the match)
    first = cap_lab.run(daemonset)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "problems []" in first.stdout and "attached" in first.stdout

    # Without SYS_ADMIN preflight names it. A restart whose programs did not change opens the
    # pinned build (bpf(2) on pins: BPF is enough); one that must compile (other flags) fails:
    # bcc, in the compiling child, cannot reopen the pinned maps.
    cached = cap_lab.run("+bpf,+net_admin")
    assert "problems ['capabilities']" in cached.stdout
    assert cached.returncode == 0 and "attached" in cached.stdout, cached.stdout + cached.stderr[-3000:]
    without = cap_lab.run("+bpf,+net_admin", extra_cflags="-DVG_UPGRADE_MARKER=2")
    assert without.returncode != 0
    assert "could not open bpf map" in without.stderr

    again = cap_lab.run(daemonset)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "attached" in again.stdout
