"""pyroute2's rtnetlink client (IPRoute) and NetlinkError, without the rest of pyroute2.

`import pyroute2` runs the package's __init__, which imports every family pyroute2 speaks (NDB
with sqlite3, IPDB, IPVS, nl80211, WireGuard, plan9 ...): 160 modules and 19 MB of the agent's
RSS. The agent speaks rtnetlink only. So, unless pyroute2 is imported already, its package module
is made from its spec without running that __init__ and only pyroute2.iproute.linux is imported
(13 MB). The package keeps a module __getattr__: a submodule's name imports that submodule
(`from pyroute2 import config`, as pyroute2's own modules do), any other name runs the package's
__init__ first, so code in the same process that does `from pyroute2 import X` still works (it
then pays for all of it).

    python -c "import controller.datapath.netlink"   # measured with /proc/self/status VmRSS
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def _import_package_lazily() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # the import below fails with Python's own message
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        # `from pyroute2 import config` (its submodules do that): just that submodule.
        if not name.startswith("__") and importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        # Any other name: the whole package, as `import pyroute2` would have given it.
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_import_package_lazily()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
