"""The syntax of Kubernetes API strings, pure: names, label keys and values, port names, CIDRs.

Each `*_problems` function returns what is wrong with a value in apimachinery's own words
(k8s.io/apimachinery/pkg/util/validation and .../api/validate/content), an empty list when the
value is valid. kube-apiserver puts these words after `Invalid value: "...":` in its 422
answers; controller.lab.validation does the same, and the agent's model reuses the port-name
rule.

CIDRs follow kube-apiserver's default parsing for legacy fields such as NetworkPolicy's
`ipBlock` (the StrictIPCIDRValidation feature gate is alpha and off by default): IPv4 octets and
the prefix length may have leading zeros (read as decimal), bits set beyond the prefix length
are allowed, an IPv6 zone is not, and a netmask in place of a prefix length is not.
"""

from __future__ import annotations

import ipaddress
import re

from controller.core.net import IPNetwork

LABEL_KEY_NAME_MAX = 63
LABEL_VALUE_MAX = 63
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
DNS1035_LABEL_MAX = 63
PORT_NAME_MAX = 15

_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = f"({_LABEL_KEY_FMT})?"
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"


def _full(fmt: str) -> re.Pattern[str]:
    return re.compile(f"(?:{fmt})")  # used with fullmatch: Go's `^...$` (Python's `$` allows a final newline)


_LABEL_KEY_RE = _full(_LABEL_KEY_FMT)
_LABEL_VALUE_RE = _full(_LABEL_VALUE_FMT)
_DNS1123_LABEL_RE = _full(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = _full(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = _full(_DNS1035_LABEL_FMT)
_PORT_NAME_CHARS_RE = re.compile(r"[-a-z0-9]+")

_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character"
)
PORT_NAME_NEEDS_A_LETTER = "must contain at least one letter (a-z)"
EMPTY = "must be non-empty"
CIDR_PROBLEM = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def max_len(limit: int) -> str:
    return f"must be no more than {limit} bytes"


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError, word for word (its doubled spaces included)."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _length(value: str) -> int:
    return len(value.encode())  # Go's len(): bytes


def label_key_problems(key: str) -> list[str]:
    """A label key (apimachinery's IsQualifiedName): an optional DNS-subdomain prefix and '/',
    then a name of at most 63 characters."""
    parts = key.split("/")
    if len(parts) > 2:
        return [
            "a valid label key "
            + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    problems: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append(f"prefix part {EMPTY}")
        else:
            problems.extend(f"prefix part {p}" for p in dns1123_subdomain_problems(prefix))
    if not name:
        problems.append(f"name part {EMPTY}")
    elif _length(name) > LABEL_KEY_NAME_MAX:
        problems.append(f"name part {max_len(LABEL_KEY_NAME_MAX)}")
    if not _LABEL_KEY_RE.fullmatch(name):
        problems.append(
            "name part " + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
        )
    return problems


def label_value_problems(value: str) -> list[str]:
    problems = [max_len(LABEL_VALUE_MAX)] if _length(value) > LABEL_VALUE_MAX else []
    if not _LABEL_VALUE_RE.fullmatch(value):
        problems.append(regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return problems


def dns1123_label_problems(value: str) -> list[str]:
    problems = [max_len(DNS1123_LABEL_MAX)] if _length(value) > DNS1123_LABEL_MAX else []
    if not _DNS1123_LABEL_RE.fullmatch(value):
        if _DNS1123_SUBDOMAIN_RE.fullmatch(value):
            problems.append("must not contain dots")
        else:
            problems.append(regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return problems


def dns1123_subdomain_problems(value: str) -> list[str]:
    problems = [max_len(DNS1123_SUBDOMAIN_MAX)] if _length(value) > DNS1123_SUBDOMAIN_MAX else []
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        problems.append(regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return problems


def dns1035_label_problems(value: str) -> list[str]:
    problems = [max_len(DNS1035_LABEL_MAX)] if _length(value) > DNS1035_LABEL_MAX else []
    if not _DNS1035_LABEL_RE.fullmatch(value):
        problems.append(regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return problems


def port_number_problems(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else ["must be between 1 and 65535, inclusive"]


def port_name_problems(name: str) -> list[str]:
    """An IANA_SVC_NAME: 1-15 of a-z, 0-9 and '-', at least one letter, no '--', no '-' at an end."""
    problems = [max_len(PORT_NAME_MAX)] if _length(name) > PORT_NAME_MAX else []
    if not _PORT_NAME_CHARS_RE.fullmatch(name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        problems.append(PORT_NAME_NEEDS_A_LETTER)
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return problems


_DIGITS_RE = re.compile(r"[0-9]+")


def _ipv4_sloppy(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(_DIGITS_RE.fullmatch(part) for part in parts):
        return None
    octets = [int(part) for part in parts]
    if any(octet > 255 for octet in octets):
        return None
    return ipaddress.IPv4Address(".".join(map(str, octets)))


def parse_cidr(text: str) -> IPNetwork | None:
    """The network a CIDR names (host bits cleared), or None when kube-apiserver's default
    parsing would not read it (see the module docstring)."""
    address, slash, prefix = text.partition("/")
    if not slash or not _DIGITS_RE.fullmatch(prefix) or "%" in address:
        return None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    if ":" in address:
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            return None
    else:
        ip = _ipv4_sloppy(address)
    if ip is None or int(prefix) > ip.max_prefixlen:
        return None
    return ipaddress.ip_network((ip, int(prefix)), strict=False)


def _as_ipv4(net: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (::ffff:a.b.c.d/96+n) as the IPv4 network it maps, the way
    Go's IPNet.Contains reads it; any other network unchanged."""
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is None or net.prefixlen < 96:
        return net
    return ipaddress.IPv4Network((mapped, net.prefixlen - 96))


def strictly_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    """kube-apiserver's rule for an ipBlock `except`: its first address is inside `cidr` (same
    family) and its prefix is longer than cidr's."""
    container, start = _as_ipv4(outer), _as_ipv4(inner).network_address
    if start.version != container.version:
        return False
    return start in container and inner.prefixlen > outer.prefixlen


class Unusable(Exception):
    """A field of a policy object that cannot be enforced as written (the parsers catch it and
    record a PolicyError naming the field, failing the rule or policy closed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
