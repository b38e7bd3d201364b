//go:build tools

// The prometheus-adapter command scripts/prometheus-adapter.sh builds; importing it keeps `go mod tidy` from
// dropping it.
package promadapter

import (
	_ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
)
