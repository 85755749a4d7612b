"""Binding a submitted spec to the endpoints and cluster the operator allows.

A REST client writes a spec; the API's process holds secrets (LLM keys, the Ray token) and
sits inside a network the client may not reach. So for specs submitted over HTTP:

* ``llm.base_url`` / ``judge_llm.base_url`` must name an endpoint of ``AGENTCPT_LLM_ENDPOINTS``
  (by its ``name`` or its exact URL); it is rewritten to that endpoint's URL;
* the key sent there is the one the operator bound to it: ``api_key_env`` is filled in from
  the list, and a spec that sets a different one is refused;
* ``execution.ray_address`` is refused whatever its value: REST runs go to the cluster of
  ``AGENTCPT_RAY_ADDRESS``. (Ray's client imports a module named by an address's scheme, and
  would send the cluster token and reveal open ports to any address a client chose.)

Refusals are ``SpecError``s naming the field (422). Nothing is connected to before the spec
is accepted, so a listener named by a refused spec receives nothing. The CLI does not go
through here: there the operator is the user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from api.settings import LLMEndpoint, normalize_base_url
from synth.errors import SpecError
from synth.llm.config import EMBEDDED, LLMConfig
from synth.spec import RunSpec

# Host names that only ever mean "this machine" or "this private network".
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


def _local_kind(url: str) -> str | None:
    """'loopback', 'private', 'link-local'… when the URL's host is such an address, else None."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
        return "local"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        ("multicast", ip.is_multicast),
    ):
        if flag:
            return kind
    return None


def find_endpoint(value: str, endpoints: Sequence[LLMEndpoint]) -> LLMEndpoint | None:
    """The allowed endpoint a spec's ``base_url`` names (by name, or by exact URL), if any."""
    for e in endpoints:
        if e.name is not None and value == e.name:
            return e
    if value == EMBEDDED:
        return next((e for e in endpoints if e.base_url == EMBEDDED), None)
    try:
        wanted = normalize_base_url(value)
    except ValueError:
        return None
    return next((e for e in endpoints if e.base_url == wanted), None)


def _allowed(endpoints: Sequence[LLMEndpoint]) -> str:
    return ", ".join(repr(e.name or e.base_url) for e in endpoints) or "none"


def bind_llm(field: str, cfg: LLMConfig, endpoints: Sequence[LLMEndpoint]) -> LLMConfig:
    """``cfg`` pointed at the allowed endpoint it names, with that endpoint's key; SpecError otherwise."""
    entry = find_endpoint(cfg.base_url, endpoints)
    if entry is None:
        kind = _local_kind(cfg.base_url)
        what = f"a {kind} address" if kind else "an endpoint"
        raise SpecError(
            f"{field}.base_url",
            f"{what} this server does not allow (AGENTCPT_LLM_ENDPOINTS); allowed: {_allowed(endpoints)}",
        )
    bound = entry.api_key_env or ""  # "" names no env var: no key is sent
    if "api_key_env" in cfg.model_fields_set and cfg.api_key_env != bound:
        raise SpecError(
            f"{field}.api_key_env",
            f"the key of endpoint {entry.name or entry.base_url!r} is bound by the server's operator; "
            "leave api_key_env out of the spec",
        )
    return cfg.model_copy(update={"base_url": entry.base_url, "api_key_env": bound})


def bind_spec(spec: RunSpec, endpoints: Sequence[LLMEndpoint]) -> RunSpec:
    """A copy of ``spec`` using only operator-allowed endpoints; SpecError naming the field otherwise."""
    if spec.execution.ray_address is not None:
        raise SpecError(
            "execution.ray_address",
            "is set by the server's operator (AGENTCPT_RAY_ADDRESS); a submitted spec cannot choose a cluster",
        )
    llm = bind_llm("llm", spec.llm, endpoints)
    judge = bind_llm("judge_llm", spec.judge_llm, endpoints) if spec.judge_llm is not None else None
    return spec.model_copy(update={"llm": llm, "judge_llm": judge})
