"""The node's uplinks as the agent keeps them: to_uplink/from_uplink attached to every uplink the
datapath finds (--uplink names, else every interface with a route through a gateway), detached
from those that stopped being one. Re-checked on the first pass and on every full resync."""

from __future__ import annotations

from collections.abc import Callable

from controller.agent.errors import ErrorBook
from controller.core.log import get_logger
from controller.datapath.interface import NodeDatapath

log = get_logger("vethguard.agent")


class Uplinks:
    def __init__(self, names: tuple[str, ...], errors: ErrorBook, exists: Callable[[int], bool]) -> None:
        self.names = names  # AgentConfig.uplinks: empty means find them by the routes
        self.errors = errors
        self.exists = exists
        self.attached: dict[int, str] = {}  # ifindex -> name: to_uplink attached
        self.checked = False  # a pass has looked for them

    def reconcile(self, dp: NodeDatapath) -> None:
        try:
            found = dp.find_uplinks(self.names)
        except Exception as exc:
            self.errors.fail("uplink", exc)
            return
        failed = False
        for ifindex, name in sorted(found.items()):
            try:
                dp.attach_uplink(ifindex)
            except Exception as exc:
                failed = True
                self.errors.fail("uplink", exc, interface=name)
                continue
            if ifindex not in self.attached:
                log.info("uplink attached", interface=name, ifindex=ifindex)
        for ifindex, name in sorted(self.attached.items()):
            if ifindex in found:
                continue
            if self.exists(ifindex):
                try:
                    dp.detach_uplink(ifindex)
                except Exception as exc:
                    self.errors.fail("uplink", exc, interface=name)
                    continue
            log.info("uplink detached", interface=name, ifindex=ifindex)
        self.attached = dict(found)
        self.checked = True
        if not failed:
            self.errors.clear("uplink")
