module toposcale.io/benchmarks/floorextender

go 1.26
