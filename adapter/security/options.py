"""Security flags of `toposcale adapter` (the names Kubernetes' own apiservers use) and the builder that turns
them into a running `Security`: TLS context, middleware, ConfigMap watch and certificate reload tasks.

    security = await build_security(args, registry)
    app = build_app(..., middlewares=[security.middleware])
    runner, site = await listener.serve(app, host, port, security.ssl_context,
                                        security.limits, security.on_cut)  # toposcale.core.listener
    ...
    await security.close()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .authconfig import (
    DEFAULT_ALWAYS_ALLOW_PATHS,
    DEFAULT_EXTRA_HEADER_PREFIXES,
    DEFAULT_GROUP_HEADERS,
    DEFAULT_USERNAME_HEADERS,
    AuthnSources,
    RequestHeaderConfig,
    merge,
    split_list_flag,
    trim_headers,
)

logger = logging.getLogger(__name__)

# k8s.io/apiserver's default (SecureServingOptions.ServerCert.CertDirectory), relative to the working dir
DEFAULT_CERT_DIR = "apiserver.local.config/certificates"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")  # ASCII digits: "\d" takes "٣"
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """A Go time.Duration string ("10s", "1m30s", "250ms", "0") in seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 10s, 1m, 500ms)")
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("secure serving")
    g.add_argument("--cert-dir", default=None,
                   help="where the self-signed serving pair (apiserver.crt, apiserver.key) is written when "
                        "--tls-cert-file/--tls-private-key-file are not given; a pair there is reused only "
                        "if the directory and key belong to this user alone (a directory others may write to "
                        f"is refused) (default {DEFAULT_CERT_DIR}, relative to the working directory)")
    g.add_argument("--tls-cert-file", default="",
                   help="serving certificate (PEM, leaf first, then intermediates); reloaded when it changes")
    g.add_argument("--tls-private-key-file", default="", help="private key of --tls-cert-file")
    g.add_argument("--tls-min-version", default="VersionTLS12", choices=["VersionTLS12", "VersionTLS13"],
                   help="oldest TLS version accepted (default VersionTLS12)")
    g.add_argument("--tls-handshake-timeout", type=go_duration, default=10.0, metavar="DURATION",
                   help="close connections whose TLS handshake takes longer (default 10s)")
    g.add_argument("--request-header-timeout", type=go_duration, default=10.0, metavar="DURATION",
                   help="close connections that take longer to send a request's headers (default 10s)")
    g.add_argument("--max-request-header-bytes", type=int, default=64 * 1024,
                   help="answer 431 and close when a request's headers exceed this (default 65536)")
    g.add_argument("--max-connections", type=int, default=1000,
                   help="open connections at most (default 1000)")
    g.add_argument("--max-requests-inflight", type=int, default=400,
                   help="requests served at once; more get 429 (default 400, as kube-apiserver)")

    a = parser.add_argument_group("delegated authentication")
    a.add_argument("--authentication-kubeconfig", default=None,
                   help="kubeconfig for TokenReviews and the extension-apiserver-authentication ConfigMap "
                        "(default: the pod's service account; outside a pod $KUBECONFIG or ~/.kube/config)")
    a.add_argument("--authentication-token-webhook-cache-ttl", type=go_duration, default=10.0,
                   metavar="DURATION", help="cache TokenReview answers this long (default 10s)")
    a.add_argument("--authentication-skip-lookup", action="store_true",
                   help="do not read kube-system/extension-apiserver-authentication; use the flags only")
    a.add_argument("--authentication-tolerate-lookup-failure", action="store_true",
                   help="start even if the ConfigMap cannot be read yet (it keeps being retried)")
    a.add_argument("--client-ca-file", default="",
                   help="client certificates signed by these CAs authenticate as user=CN, groups=O "
                        "(default: client-ca-file from the ConfigMap)")
    a.add_argument("--requestheader-client-ca-file", default="",
                   help="front-proxy CA: a client certificate from it may assert the user in request headers "
                        "(default: from the ConfigMap, with its header names and allowed names)")
    a.add_argument("--requestheader-allowed-names", default="",
                   help="comma-separated common names allowed to act as front proxy; empty: any cert from "
                        "--requestheader-client-ca-file")
    a.add_argument("--requestheader-username-headers", default=",".join(DEFAULT_USERNAME_HEADERS),
                   help="headers holding the user, first non-empty wins (default %(default)s; with "
                        "--requestheader-client-ca-file)")
    a.add_argument("--requestheader-group-headers", default=",".join(DEFAULT_GROUP_HEADERS),
                   help="headers holding groups, all values (default %(default)s)")
    a.add_argument("--requestheader-uid-headers", default="",
                   help="headers holding the user's UID, first non-empty wins (kube-apiserver >= 1.32 sends "
                        "X-Remote-Uid; default: none)")
    a.add_argument("--requestheader-extra-headers-prefix", default=",".join(DEFAULT_EXTRA_HEADER_PREFIXES),
                   help="header prefixes holding user extras (default %(default)s)")

    z = parser.add_argument_group("delegated authorization")
    z.add_argument("--authorization-kubeconfig", default=None,
                   help="kubeconfig for SubjectAccessReviews (default: the pod's service account; outside a "
                        "pod $KUBECONFIG or ~/.kube/config)")
    z.add_argument("--authorization-webhook-cache-authorized-ttl", type=go_duration, default=10.0,
                   metavar="DURATION", help="cache allowed answers this long (default 10s)")
    z.add_argument("--authorization-webhook-cache-unauthorized-ttl", type=go_duration, default=10.0,
                   metavar="DURATION", help="cache denied answers this long (default 10s)")
    z.add_argument("--authorization-always-allow-paths", default=",".join(DEFAULT_ALWAYS_ALLOW_PATHS),
                   help="comma-separated paths served without authorization; `prefix*` matches a prefix "
                        "(default %(default)s)")
    z.add_argument("--insecure-allow-anonymous", action="store_true",
                   help="INSECURE, for local runs and the demo: serve every request without authentication "
                        "or authorization")


@dataclass
class Security:
    """What the adapter's server needs: `ssl_context`, `middleware`, `limits`, `on_cut`; `close()` at exit."""

    tls: Any
    filter: Any
    limits: Any
    metrics: Any
    flag_sources: AuthnSources = field(default_factory=AuthnSources)
    cluster_sources: AuthnSources | None = None
    configmap: Any = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    api_clients: list[Any] = field(default_factory=list)

    @property
    def ssl_context(self) -> Any:
        """None only for `--insecure-allow-anonymous` without TLS flags: plain HTTP for local runs."""
        return self.tls.context if self.tls is not None else None

    @property
    def middleware(self) -> Any:
        return self.filter.middleware

    def sources(self) -> AuthnSources:
        return merge(self.flag_sources, self.cluster_sources)

    def on_cut(self, why: str) -> None:
        self.metrics.rejected.labels(why).inc()

    def _cluster_changed(self, sources: AuthnSources) -> None:
        self.cluster_sources = sources
        if self.tls is not None:
            self.tls.set_client_cas(self.sources().trusted_cas())

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for api in self.api_clients:
            with contextlib.suppress(Exception):
                await api.close()


def _read_bundle(path: str, flag: str) -> Any:
    from .clientcert import CABundle

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    return CABundle.from_pem(data, f"{flag} {path}")


def flag_sources(args: argparse.Namespace) -> AuthnSources:
    client_ca = _read_bundle(args.client_ca_file, "--client-ca-file") if args.client_ca_file else None
    rh = None
    if args.requestheader_client_ca_file:
        rh = RequestHeaderConfig(
            client_ca=_read_bundle(args.requestheader_client_ca_file, "--requestheader-client-ca-file"),
            allowed_names=split_list_flag(args.requestheader_allowed_names),
            username_headers=trim_headers(split_list_flag(args.requestheader_username_headers),
                                          "--requestheader-username-headers"),
            group_headers=trim_headers(split_list_flag(args.requestheader_group_headers),
                                       "--requestheader-group-headers"),
            extra_header_prefixes=trim_headers(split_list_flag(args.requestheader_extra_headers_prefix),
                                               "--requestheader-extra-headers-prefix"),
            uid_headers=trim_headers(split_list_flag(args.requestheader_uid_headers),
                                     "--requestheader-uid-headers"),
        )
    return AuthnSources(client_ca=client_ca, request_header=rh)


async def build_security(args: argparse.Namespace, registry: Any, *,
                         hosts: Sequence[str] | None = None, lookup_timeout: float = 10.0,
                         cert_reload_interval: float = 1.0) -> Security:
    """Raises ValueError (bad flags or files) or RuntimeError (Kubernetes unreachable), with a clear
    message."""
    from toposcale.core import kube
    from toposcale.core.listener import Limits

    from .authn import Authenticator
    from .authz import Authorizer
    from .kubeclients import AuthConfigMapWatcher, KubeSubjectAccessReviewer, KubeTokenReviewer
    from .metrics import SecurityMetrics
    from .middleware import SecurityFilter
    from .tls import ServingTLS, ensure_self_signed, fingerprint

    metrics = SecurityMetrics(registry)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        raise ValueError("--tls-cert-file and --tls-private-key-file go together")
    if args.tls_cert_file and args.cert_dir:
        raise ValueError("--cert-dir is for a generated certificate; it cannot go with --tls-cert-file")
    # TLS always, except for --insecure-allow-anonymous without any TLS flag (plain HTTP for local runs)
    want_tls = bool(args.tls_cert_file or args.cert_dir) or not args.insecure_allow_anonymous
    cert_file = key_file = ""
    if args.tls_cert_file:
        cert_file, key_file = args.tls_cert_file, args.tls_private_key_file
    elif want_tls:
        cert_dir = args.cert_dir or DEFAULT_CERT_DIR
        cert_path, key_path, generated = ensure_self_signed(cert_dir, hosts)
        cert_file, key_file = str(cert_path), str(key_path)
        logger.info("self-signed serving certificate" + (" generated" if generated else " reused"),
                    extra={"cert_file": cert_file, "key_file": key_file})
    limits = Limits(header_timeout=args.request_header_timeout, handshake_timeout=args.tls_handshake_timeout,
                    max_header_bytes=args.max_request_header_bytes, max_connections=args.max_connections)

    def on_reload(what: str, ok: bool) -> None:
        metrics.tls_reloads.labels(what, "applied" if ok else "failed").inc()
        if what == "serving-cert" and ok and tls_ref:
            cert = tls_ref[0].loaded.cert
            metrics.cert_expiry.set(cert.not_valid_after_utc.timestamp())
            logger.info("serving certificate rotated", extra={"fingerprint": fingerprint(cert)})

    tls_ref: list[ServingTLS] = []
    if args.insecure_allow_anonymous:
        tls = None
        if want_tls:
            tls = ServingTLS(cert_file, key_file, min_version=args.tls_min_version, on_reload=on_reload)
            tls_ref.append(tls)
        logger.warning("INSECURE: --insecure-allow-anonymous: every request is served without authentication "
                       "or authorization" + ("" if tls else ", over plain HTTP") +
                       "; use it only for local runs and demos")
        filt = SecurityFilter(None, None, metrics, insecure_allow_anonymous=True,
                              max_requests_inflight=args.max_requests_inflight)
        sec = Security(tls=tls, filter=filt, limits=limits, metrics=metrics)
    else:
        flags = flag_sources(args)
        tls = ServingTLS(cert_file, key_file, client_cas=flags.trusted_cas(),
                         min_version=args.tls_min_version, on_reload=on_reload)
        tls_ref.append(tls)
        sec = Security(tls=tls, filter=None, limits=limits, metrics=metrics, flag_sources=flags)
        try:
            authn_api = authz_api = None
            try:
                authn_api = await kube.api_client(args.authentication_kubeconfig)
            except Exception as exc:
                if args.authentication_kubeconfig:
                    raise RuntimeError(
                        f"delegated authentication needs the Kubernetes API ({exc}); fix "
                        f"--authentication-kubeconfig, or use --insecure-allow-anonymous for local runs"
                    ) from None
                # As k8s.io/apiserver does with an optional remote kubeconfig: start, but trust only what the
                # flags configure (client-CA / front-proxy certificates) and authorize only system:masters and
                # the always-allowed paths. Nothing is served to an unauthenticated caller.
                logger.warning(
                    "no Kubernetes credentials (not in a pod, no --authentication-kubeconfig, no kubeconfig "
                    "found): bearer tokens (TokenReview) and the extension-apiserver-authentication lookup "
                    "are off; only client certificates from the CA flags authenticate, and only "
                    "system:masters and the always-allowed paths are authorized. "
                    "Use --insecure-allow-anonymous for local runs.",
                    extra={"reason": str(exc)})
            if authn_api is not None:
                sec.api_clients.append(authn_api)
            if args.authorization_kubeconfig == args.authentication_kubeconfig:
                authz_api = authn_api
            else:
                try:
                    authz_api = await kube.api_client(args.authorization_kubeconfig)
                except Exception as exc:
                    raise RuntimeError(
                        f"delegated authorization needs the Kubernetes API ({exc}); pass "
                        f"--authorization-kubeconfig, run in a pod, or use --insecure-allow-anonymous"
                    ) from None
                sec.api_clients.append(authz_api)
            authenticator = Authenticator(sec.sources,
                                          KubeTokenReviewer(authn_api) if authn_api is not None else None,
                                          cache_ttl=args.authentication_token_webhook_cache_ttl)
            authorizer = Authorizer(
                KubeSubjectAccessReviewer(authz_api) if authz_api is not None else None,
                always_allow_paths=split_list_flag(args.authorization_always_allow_paths),
                allow_ttl=args.authorization_webhook_cache_authorized_ttl,
                deny_ttl=args.authorization_webhook_cache_unauthorized_ttl)
            sec.filter = SecurityFilter(authenticator, authorizer, metrics,
                                        max_requests_inflight=args.max_requests_inflight)
            if authn_api is not None and not args.authentication_skip_lookup:
                watcher = AuthConfigMapWatcher(authn_api, sec._cluster_changed)
                sec.configmap = watcher
                sec.tasks.append(asyncio.create_task(watcher.run(), name="auth-configmap"))
                try:
                    await asyncio.wait_for(watcher.synced.wait(), lookup_timeout)
                except TimeoutError:
                    msg = (f"cannot read kube-system/extension-apiserver-authentication "
                           f"({watcher.reflector.last_error}); grant the "
                           f"extension-apiserver-authentication-reader Role, or pass "
                           f"--authentication-skip-lookup with the CA flags")
                    if not args.authentication_tolerate_lookup_failure:
                        raise RuntimeError(msg) from None
                    logger.error(msg + "; continuing, the lookup is retried")
        except BaseException:
            await sec.close()
            raise
    if tls is not None:
        assert tls.loaded is not None
        metrics.cert_expiry.set(tls.loaded.cert.not_valid_after_utc.timestamp())
        logger.info("secure serving configured", extra={
            "cert_file": cert_file, "fingerprint": fingerprint(tls.loaded.cert),
            "anonymous": bool(args.insecure_allow_anonymous),
            "client_cas": [b.source for b in tls.client_cas]})
        sec.tasks.append(asyncio.create_task(tls.watch(cert_reload_interval), name="tls-reload"))
    return sec
