"""Numeric identities shared by the compiler and the datapath (bpf/lib/structs.h).

Reserved identities name peers that are not pods; pods get identities from POD_ID_MIN,
CIDR blocks of policies from CIDR_ID_MIN, namespaces from NS_ID_MIN (a pod address's ipcache
entry carries its namespace's, so a peer "every pod of these namespaces" is one key per
namespace). tests/unit/test_map_layout.py checks these against
the C headers.
"""

from __future__ import annotations

ID_ANY = 0  # a policy entry for any peer
ID_HOST = 1  # this node's own addresses
ID_WORLD = 2  # anything outside the cluster that no CIDR rule names
ID_REMOTE_NODE = 3  # another node's addresses
POD_ID_MIN = 256
CIDR_ID_MIN = 1 << 24
CIDR_ID_MAX = (1 << 25) - 1
POD_ID_MAX = CIDR_ID_MIN - 1
NS_ID_MIN = 1 << 25
NS_ID_MAX = (1 << 26) - 1
DOMAIN_ID_MIN = 1 << 26  # domain identities (controller/compiler/stages/domains.py): an address a
DOMAIN_ID_MAX = (1 << 27) - 1  # pod learned from DNS, keyed in tier profiles like a peer identity
