"""The JSON documents the adapter serves, one module per document family (field names from k8s.io/metrics
and k8s.io/apimachinery types.go): `external` (external.metrics.k8s.io/v1beta1), `custom`
(custom.metrics.k8s.io/v1beta2), `discovery` (what /api and /apis list: both groups), `openapi` (the
OpenAPI v2/v3 documents the aggregator merges) and `meta` (metav1 pieces they share). Errors are metav1.Status
documents from the kit (toposcale.core.status). Pure: no aiohttp, no source."""
