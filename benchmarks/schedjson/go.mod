module toposcale.io/benchmarks/schedjson

go 1.26
