module toposcale.test/gpuallocator

go 1.26

require (
	github.com/NVIDIA/go-gpuallocator v0.6.0
	github.com/NVIDIA/go-nvml v0.13.3-1
)

require (
	github.com/NVIDIA/go-nvlib v0.12.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
)
