"""Where the authentication settings come from: flags, or the `kube-system/extension-apiserver-authentication`
ConfigMap that kube-apiserver publishes for aggregated API servers. Pure logic, no I/O.

The ConfigMap keys are the kube-apiserver flag names; list values are JSON arrays (k8s.io/apiserver
`headerrequest.deserializeStrings`), e.g. `requestheader-allowed-names: '["front-proxy-client"]'`. As in
k8s.io/apiserver's `DelegatingAuthenticationOptions.ApplyTo`, a flag wins over the ConfigMap for its part:
`--client-ca-file` replaces `client-ca-file`; `--requestheader-client-ca-file` replaces the whole
request-header group (CA, allowed names, header names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only when certificates are parsed: `toposcale --help` stays fast
    from .clientcert import CABundle

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"

KEY_CLIENT_CA = "client-ca-file"
KEY_RH_CLIENT_CA = "requestheader-client-ca-file"
KEY_RH_ALLOWED_NAMES = "requestheader-allowed-names"
KEY_RH_USERNAME_HEADERS = "requestheader-username-headers"
KEY_RH_GROUP_HEADERS = "requestheader-group-headers"
KEY_RH_UID_HEADERS = "requestheader-uid-headers"  # kube-apiserver >= 1.32 (RemoteRequestHeaderUID)
KEY_RH_EXTRA_PREFIXES = "requestheader-extra-headers-prefix"

# k8s.io/apiserver NewDelegatingAuthenticationOptions defaults
DEFAULT_USERNAME_HEADERS = ("x-remote-user",)
DEFAULT_GROUP_HEADERS = ("x-remote-group",)
DEFAULT_EXTRA_HEADER_PREFIXES = ("x-remote-extra-",)
# k8s.io/apiserver NewDelegatingAuthorizationOptions defaults
DEFAULT_ALWAYS_ALLOW_PATHS = ("/healthz", "/livez", "/readyz")
DEFAULT_ALWAYS_ALLOW_GROUPS = ("system:masters",)


@dataclass(frozen=True)
class RequestHeaderConfig:
    """Front-proxy authentication: a client cert from `client_ca` whose CN is in `allowed_names` (empty: any)
    may assert the user in the first non-empty `username_headers`, groups in `group_headers`, extras under
    `extra_header_prefixes`."""

    client_ca: CABundle
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = DEFAULT_USERNAME_HEADERS
    group_headers: tuple[str, ...] = DEFAULT_GROUP_HEADERS
    extra_header_prefixes: tuple[str, ...] = DEFAULT_EXTRA_HEADER_PREFIXES
    uid_headers: tuple[str, ...] = ()

    def all_header_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(exact header names, header prefixes) that carry identity: stripped from every request."""
        return self.username_headers + self.group_headers + self.uid_headers, self.extra_header_prefixes


@dataclass(frozen=True)
class AuthnSources:
    client_ca: CABundle | None = None
    request_header: RequestHeaderConfig | None = None

    def trusted_cas(self) -> list[CABundle]:
        out = [b for b in (self.client_ca, self.request_header and self.request_header.client_ca) if b]
        return out


def trim_headers(names: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    out = []
    for name in names:
        trimmed = name.strip()
        if not trimmed:
            raise ValueError(f"{what}: empty header name {name!r}")
        out.append(trimmed)
    return tuple(out)


def split_list_flag(value: str | None) -> tuple[str, ...]:
    """A pflag StringSlice value: comma separated, empty string -> empty list."""
    if not value:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def deserialize_strings(value: str | None, key: str) -> tuple[str, ...]:
    if not value:
        return ()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ConfigMap key {key}: not a JSON array of strings: {exc}") from None
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise ValueError(f"ConfigMap key {key}: not a JSON array of strings: {value!r}")
    return tuple(parsed)


def from_configmap(data: dict[str, str] | None) -> AuthnSources:
    """Parse the ConfigMap's `data`; a missing key means that method is not configured by the cluster."""
    from .clientcert import CABundle

    data = data or {}
    client_ca = None
    if data.get(KEY_CLIENT_CA, "").strip():
        client_ca = CABundle.from_pem(data[KEY_CLIENT_CA], f"ConfigMap key {KEY_CLIENT_CA}")
    request_header = None
    if data.get(KEY_RH_CLIENT_CA, "").strip():
        request_header = RequestHeaderConfig(
            client_ca=CABundle.from_pem(data[KEY_RH_CLIENT_CA], f"ConfigMap key {KEY_RH_CLIENT_CA}"),
            allowed_names=deserialize_strings(data.get(KEY_RH_ALLOWED_NAMES), KEY_RH_ALLOWED_NAMES),
            username_headers=trim_headers(
                deserialize_strings(data.get(KEY_RH_USERNAME_HEADERS), KEY_RH_USERNAME_HEADERS),
                KEY_RH_USERNAME_HEADERS),
            group_headers=trim_headers(
                deserialize_strings(data.get(KEY_RH_GROUP_HEADERS), KEY_RH_GROUP_HEADERS),
                KEY_RH_GROUP_HEADERS),
            extra_header_prefixes=trim_headers(
                deserialize_strings(data.get(KEY_RH_EXTRA_PREFIXES), KEY_RH_EXTRA_PREFIXES),
                KEY_RH_EXTRA_PREFIXES),
            uid_headers=trim_headers(
                deserialize_strings(data.get(KEY_RH_UID_HEADERS), KEY_RH_UID_HEADERS), KEY_RH_UID_HEADERS),
        )
    return AuthnSources(client_ca=client_ca, request_header=request_header)


def merge(flags: AuthnSources, cluster: AuthnSources | None) -> AuthnSources:
    """Flags first; the ConfigMap fills what the flags left unset."""
    cluster = cluster or AuthnSources()
    return AuthnSources(
        client_ca=flags.client_ca or cluster.client_ca,
        request_header=flags.request_header or cluster.request_header,
    )
