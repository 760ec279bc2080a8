"""Which addresses a webhook may be posted to.

A webhook URL is chosen by an org's admin, and the notifier posts from inside the
operator's network: left open, it would reach the NATS port, a database or a cloud's
metadata service on the admin's behalf. By default only addresses on the public
internet are posted to: loopback, private, link-local (the metadata address
169.254.169.254 among them), shared (100.64.0.0/10), multicast and reserved ones are
refused. `--webhook-allow HOST|CIDR` opens a host name or a network.

The check is made on the address the name resolves to, at the moment of the post, and
the connection goes to that very address (the URL's host name still names the receiver
for TLS and the Host header): a name that resolves elsewhere a moment later (DNS
rebinding) changes nothing. Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from notifier.errors import DeliveryError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class WebhookPolicy:
    hosts: frozenset[str] = frozenset()
    """Host names allowed whatever they resolve to (lower case)."""
    networks: tuple[Network, ...] = field(default_factory=tuple)
    """Networks allowed although not public."""

    @classmethod
    def parse(cls, entries: list[str] | tuple[str, ...]) -> WebhookPolicy:
        """From `--webhook-allow` values: a host name, an address or a CIDR network;
        ValueError naming a bad one."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if not text or any(c in text for c in "/:@ ") or text.startswith(".") or ".." in text:
                raise ValueError(f"--webhook-allow {entry!r} is neither a host name nor an address or CIDR network "
                                 "(e.g. hooks.internal, 10.0.0.0/8)")
            hosts.add(text.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, address: Address) -> bool:
        return is_public(address) or any(address in network for network in self.networks)

    def resolve(self, host: str, port: int, receiver: str) -> str:
        """The address to connect to for `host`: its first permitted one. DeliveryError
        (permanent) when it resolves to none that is permitted, (passing) when it does
        not resolve now."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise DeliveryError(f"cannot reach {receiver}: the name does not resolve ({err.strerror})",
                                permanent=False) from err
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found]
        if host.lower().rstrip(".") in self.hosts:
            return str(addresses[0])
        for address in addresses:
            if self.permits(address):
                return str(address)
        refused = addresses[0]
        raise DeliveryError(f"{receiver} resolves to {refused}, {_kind(refused)}: webhooks go only to public "
                            "addresses unless the notifier allows it (--webhook-allow HOST|CIDR)", permanent=True)


def is_public(address: Address) -> bool:
    """An address on the public internet (IPv4 inside IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _kind(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    kinds = (("a loopback address", address.is_loopback),
             ("a link-local address (cloud metadata among them)", address.is_link_local),
             ("a private address", address.is_private), ("a multicast address", address.is_multicast),
             ("an unspecified address", address.is_unspecified))
    for word, test in kinds:
        if test:
            return word
    return "not a public address"
