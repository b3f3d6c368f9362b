"""controller.datapath.netlink gives the agent pyroute2's rtnetlink client without importing the
rest of pyroute2, and `from pyroute2 import X` still works in the same process afterwards
(fresh interpreters: the import state of this one is not touched)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from controller.datapath.netlink import IPRoute, NetlinkError
narrow = sorted(m for m in sys.modules if m.startswith("pyroute2"))
import pyroute2
from pyroute2 import NDB, IPRoute as Full
print(json.dumps({"narrow": narrow, "same": Full is IPRoute, "version": pyroute2.__version__,
                  "ndb": NDB.__name__, "error": issubclass(NetlinkError, Exception)}))
"""


def test_only_rtnetlink_is_imported_and_the_whole_package_is_there_when_asked_for() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert "pyroute2.iproute.linux" in got["narrow"]
    assert not any(m.startswith(("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.plan9")) for m in got["narrow"])
    assert got["same"] and got["ndb"] == "NDB" and got["error"] and got["version"] != "unknown"


def test_a_process_that_imported_pyroute2_first_gets_the_same_classes() -> None:
    code = (
        "import pyroute2\nfrom controller.datapath.netlink import IPRoute\nprint(IPRoute is pyroute2.IPRoute)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
