//go:build tools

// The KEDA commands scripts/keda.sh builds; importing them keeps `go mod tidy` from dropping them.
package keda

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
