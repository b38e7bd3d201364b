"""Adapter security: TLS serving with reload, delegated authentication and authorization.

The same guarantees k8s.io/apiserver gives aggregated API servers (prometheus-adapter, metrics-server):
front-proxy request-header authentication, client certificates, bearer tokens via TokenReview,
SubjectAccessReview for every request. Pure logic lives in `clientcert`, `authn`, `authz`, `requestinfo`,
`authconfig`, `cache`; Kubernetes calls in `kubeclients`; aiohttp glue in `middleware`; flags in `options`.
The bounded HTTPS listener itself is the kit's (`toposcale.core.listener`), shared with the extender.
"""
