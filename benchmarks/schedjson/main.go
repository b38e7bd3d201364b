// Command schedjson times the JSON work kube-scheduler's HTTPExtender does for one pod in names mode
// (pkg/scheduler/extender.go, send): json.Marshal of ExtenderArgs for filter and for prioritize, and
// json.NewDecoder(...).Decode of the extender's ExtenderFilterResult and HostPriorityList, on the bodies the
// extender really answered (files given as arguments). The types are copies of k8s.io/kube-scheduler/extender/v1
// with the same field types (the Pod as generic JSON: its encoding is a small part). Standard library only.
//
//	schedjson POD.json NAMES.json FILTER-ANSWER.json PRIORITIZE-ANSWER.json
//
// prints one JSON line: {"marshal_ms":..,"filter_decode_ms":..,"prioritize_decode_ms":..,"total_ms":..}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"
)

type extenderArgs struct {
	Pod       json.RawMessage
	Nodes     *struct{}
	NodeNames *[]string
}

type extenderFilterResult struct {
	Nodes                      *struct{ Items []json.RawMessage }
	NodeNames                  *[]string
	FailedNodes                map[string]string
	FailedAndUnresolvableNodes map[string]string
	Error                      string
}

type hostPriority struct {
	Host  string
	Score int64
}

func read(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "schedjson:", err)
		os.Exit(2)
	}
	return b
}

// median of n timings of f, in milliseconds
func median(n int, f func()) float64 {
	ts := make([]float64, n)
	for i := range ts {
		t := time.Now()
		f()
		ts[i] = float64(time.Since(t).Nanoseconds()) / 1e6
	}
	sort.Float64s(ts)
	return ts[n/2]
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: schedjson POD.json NAMES.json FILTER-ANSWER.json PRIORITIZE-ANSWER.json")
		os.Exit(2)
	}
	pod := json.RawMessage(read(os.Args[1]))
	var names []string
	if err := json.Unmarshal(read(os.Args[2]), &names); err != nil {
		fmt.Fprintln(os.Stderr, "schedjson: names:", err)
		os.Exit(2)
	}
	filterAnswer, prioAnswer := read(os.Args[3]), read(os.Args[4])
	var kept extenderFilterResult
	if err := json.Unmarshal(filterAnswer, &kept); err != nil || kept.NodeNames == nil {
		fmt.Fprintln(os.Stderr, "schedjson: filter answer:", err)
		os.Exit(2)
	}
	const n = 41
	marshal := median(n, func() {
		_, _ = json.Marshal(extenderArgs{Pod: pod, NodeNames: &names})
		_, _ = json.Marshal(extenderArgs{Pod: pod, NodeNames: kept.NodeNames})
	})
	filterDecode := median(n, func() {
		var r extenderFilterResult
		_ = json.NewDecoder(bytes.NewReader(filterAnswer)).Decode(&r)
	})
	prioDecode := median(n, func() {
		var r []hostPriority
		_ = json.NewDecoder(bytes.NewReader(prioAnswer)).Decode(&r)
	})
	fmt.Printf("{\"marshal_ms\":%.4f,\"filter_decode_ms\":%.4f,\"prioritize_decode_ms\":%.4f,\"total_ms\":%.4f}\n",
		marshal, filterDecode, prioDecode, marshal+filterDecode+prioDecode)
}
