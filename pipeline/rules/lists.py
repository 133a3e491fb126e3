"""Allowlists and protected domains shared by every rule, shaped for fast checks (no I/O)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def host_match(host: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p.startswith("*."):
            if host.endswith(p[1:]):
                return True
        elif host == p:
            return True
    return False


@dataclass(frozen=True, slots=True)
class SharedLists:
    """Allowlists and protected domains, shaped for fast checks by the catalog rules."""

    member_emails: frozenset[str] = frozenset()
    member_domains: tuple[str, ...] = ()
    webhook_hosts: tuple[str, ...] = ()
    ip_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    protected_domains: tuple[str, ...] = ()

    @property
    def has_member_allowlist(self) -> bool:
        """Whether any member email or domain is configured."""
        return bool(self.member_emails or self.member_domains)

    def member_allowed(self, email: str) -> bool:
        """Whether ``email`` is on the member allowlist (by address or by domain)."""
        e = email.strip().lower()
        if e in self.member_emails:
            return True
        domain = e.rpartition("@")[2]
        return bool(domain) and host_match(domain, self.member_domains)

    def host_allowed(self, host: str) -> bool:
        """Whether a webhook target host is on the allowlist."""
        return host_match(host.lower().rstrip("."), self.webhook_hosts)

    def ip_trusted(self, ip: str) -> bool:
        """Whether ``ip`` is inside a trusted network (False for text that is not an IP)."""
        if not self.ip_networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self.ip_networks)
