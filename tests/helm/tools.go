//go:build tools

// The helm command scripts/helm.sh builds; importing it keeps `go mod tidy` from dropping it.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
