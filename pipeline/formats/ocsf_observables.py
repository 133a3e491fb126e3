"""OCSF observables: the indicators an OCSF document carries, listed once in ``observables``.

``observables`` (recommended by ``base_event`` for every class) name the IPs, user names, email
addresses and user agents of a finished document, and a finding's entities, by attribute path
(``src_endpoint.ip``, ``users[0].email_addr``, ``resources[1].uid``) with the ``observable.type_id``
the OCSF schema defines for that attribute (its object attribute's, else its type's): 2 IP Address
(``ip_t``), 4 User Name (``username_t``), 5 Email Address (``email_t``), 16 HTTP User-Agent, and
for a finding's ``resources[]`` 10 Resource UID (``resource_uid_t``) and 38 Resource Details
Object: name — whatever the value looks like, since a checker compares the type with the
attribute's. Only attributes of the schema are named: nothing inside a ``json_t`` such as
``entity.data`` (the OCSF validator refuses such a path). Also the value shapes the OCSF mapping
shares with them (an IP address, the schema's email pattern).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

# The OCSF schema's own email pattern: only addresses that match go to email_addr.
EMAIL = re.compile(r"^[a-zA-Z0-9!#$%&'*+\-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$")
# observable.type_id: the OCSF dictionary types (and attribute) marked observable that our documents carry
_OBSERVABLE_TYPES = {2: "IP Address", 4: "User Name", 5: "Email Address", 10: "Resource UID",
                     16: "HTTP User-Agent", 38: "Resource Details Object: name"}  # fmt: skip
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")  # a dotted DNS name


def _user_observables(path: str, user: Any) -> list[tuple[str, int, Any]]:
    """A person's email address and user name (not the workspace standing in as the user of an API key)."""
    if not isinstance(user, Mapping) or user.get("type_id") == 99:
        return []
    return [(f"{path}.email_addr", 5, user.get("email_addr")), (f"{path}.name", 4, user.get("name"))]


def _resource_observables(i: int, res: Any) -> list[tuple[str, int, Any]]:
    """A finding's entities that are indicators (an IP, a domain or host, a user or member): the
    uid as 10 Resource UID, a person's name or email address as 38 Resource Details Object: name."""
    if not isinstance(res, Mapping):
        return []
    kind, uid, name = res.get("type"), res.get("uid"), res.get("name")
    if kind == "ip" and valid_ip(uid) is not None:
        return [(f"resources[{i}].uid", 10, uid)]
    if kind in ("domain", "host") and isinstance(uid, str) and _HOSTNAME.match(uid) and valid_ip(uid) is None:
        return [(f"resources[{i}].uid", 10, uid)]
    if kind in ("user", "member") and isinstance(name, str):
        return [(f"resources[{i}].name", 38, name)]
    return []


def observables(out: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OCSF observables of the document built so far: the IPs, user names, email addresses and user agents
    it carries and a finding's indicator entities, each named by its attribute path, in a fixed order,
    each value once. Only values already in the document are read."""
    found: list[tuple[str, int, Any]] = [("src_endpoint.ip", 2, (out.get("src_endpoint") or {}).get("ip"))]
    found += _user_observables("actor.user", (out.get("actor") or {}).get("user"))
    found += _user_observables("user", out.get("user"))
    for i, user in enumerate(out.get("users") or []):
        found += _user_observables(f"users[{i}]", user)
    found.append(("http_request.user_agent", 16, (out.get("http_request") or {}).get("user_agent")))
    for i, res in enumerate(out.get("resources") or [] if out.get("class_uid") == 2004 else []):
        found += _resource_observables(i, res)
    observables: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, type_id, value in found:
        if isinstance(value, str) and value and value not in seen:
            seen.add(value)
            observables.append({"name": name, "type_id": type_id, "type": _OBSERVABLE_TYPES[type_id], "value": value})
    return observables


def valid_ip(value: Any) -> str | None:
    """``value`` when it is an IPv4/IPv6 address text, else None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return value
