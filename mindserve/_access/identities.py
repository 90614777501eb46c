"""The identities a verified client certificate carries, each with its type, and the rule that matches them
against the names configured in ``AccessConfig.client_certificates``.

A configured name is matched by its form: an IP address matches an IP-address SAN (compared as addresses, so
``::1`` is ``0:0::1``); a name with ``:`` (``spiffe://cluster/ns/app``, ``urn:...``) a URI SAN, exactly; a name
with ``@`` an email (rfc822Name) SAN, its domain without case; any other name a DNS SAN, without case. Every
configured name also matches the subject's common name, exactly. A SAN of one type never stands for a name of
another: an email or URI SAN spelled like a configured DNS name opens nothing. Wildcards are not expanded (a
DNS SAN ``*.example.com`` matches only the configured name ``*.example.com``).
"""

from __future__ import annotations

import ipaddress
from typing import Optional

CN = "CN"  # the subject's common name
DNS = "DNS"  # a dNSName SAN
IP = "IP"  # an iPAddress SAN
EMAIL = "email"  # an rfc822Name SAN
URI = "URI"  # a uniformResourceIdentifier SAN
Identity = tuple[str, str]  # (one of the types above, the value as the certificate carries it)


def kind_of_name(name: str) -> str:
    """The SAN type a configured name is matched against (by its form; see the module's text)."""
    try:
        ipaddress.ip_address(name)
        return IP
    except ValueError:
        pass
    if ":" in name:  # no DNS name or email address has one; every URI does
        return URI
    return EMAIL if "@" in name else DNS


def normalized(kind: str, value: str) -> Optional[str]:
    """``value`` of type ``kind`` in the form compared; None for a value that type cannot have (an IP SAN that
    is no address) or an unknown type."""
    if kind == IP:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            return None
    if kind == DNS:
        return value.lower()
    if kind == EMAIL:
        local, at, domain = value.rpartition("@")
        return f"{local}{at}{domain.lower()}"
    if kind in (URI, CN):
        return value
    return None


def configured_identities(name: str) -> list[Identity]:
    """The typed identities a configured name matches: its SAN type's, and the common name."""
    kind = kind_of_name(name)
    typed = normalized(kind, name)
    found = [(CN, name)]
    if typed is not None:
        found.append((kind, typed))
    return found
