// Command floorextender is the cheapest HTTP scheduler extender there can be, for benchmarks/bench_scheduler.py
// row (d): names mode (nodeCacheCapable: true), Go's net/http and encoding/json (what kube-scheduler's
// HTTPExtender speaks), no decisions. filter keeps every node it is sent; prioritize answers every node with
// the score a real toposcale extender gave it (read once from a HostPriorityList file, -scores), or 5. Its
// answers are the size of toposcale's, so what it costs the scheduler is the floor of any extender in names
// mode at that fleet size: the scheduler's own HTTP and JSON work and one round trip per verb.
//
//	floorextender -listen 127.0.0.1:PORT [-scores PRIORITIZE-ANSWER.json]
//
// The types are copies of k8s.io/kube-scheduler/extender/v1 (the Pod as raw JSON). Standard library only.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
)

type extenderArgs struct {
	Pod       json.RawMessage
	Nodes     json.RawMessage
	NodeNames *[]string
}

type extenderFilterResult struct {
	NodeNames                  *[]string
	FailedNodes                map[string]string
	FailedAndUnresolvableNodes map[string]string
	Error                      string
}

type hostPriority struct {
	Host  string
	Score int64
}

var calls = map[string]*atomic.Int64{"filter": {}, "prioritize": {}}

func decode(w http.ResponseWriter, r *http.Request) (*extenderArgs, bool) {
	var args extenderArgs
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&args); err != nil || args.NodeNames == nil {
		http.Error(w, fmt.Sprintf("names mode only: %v", err), http.StatusBadRequest)
		return nil, false
	}
	return &args, true
}

func answer(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Printf("answer: %v", err)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	scoresFile := flag.String("scores", "", "a HostPriorityList (JSON) giving each node's score; default 5")
	flag.Parse()

	scores := map[string]int64{}
	if *scoresFile != "" {
		data, err := os.ReadFile(*scoresFile)
		if err != nil {
			log.Fatalf("scores: %v", err)
		}
		var list []hostPriority
		if err := json.Unmarshal(data, &list); err != nil {
			log.Fatalf("scores %s: %v", *scoresFile, err)
		}
		for _, hp := range list {
			scores[hp.Host] = hp.Score
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /filter", func(w http.ResponseWriter, r *http.Request) {
		args, ok := decode(w, r)
		if !ok {
			return
		}
		calls["filter"].Add(1)
		answer(w, extenderFilterResult{NodeNames: args.NodeNames, FailedNodes: map[string]string{},
			FailedAndUnresolvableNodes: map[string]string{}})
	})
	mux.HandleFunc("POST /prioritize", func(w http.ResponseWriter, r *http.Request) {
		args, ok := decode(w, r)
		if !ok {
			return
		}
		calls["prioritize"].Add(1)
		list := make([]hostPriority, len(*args.NodeNames))
		for i, name := range *args.NodeNames {
			s, known := scores[name]
			if !known {
				s = 5
			}
			list[i] = hostPriority{Host: name, Score: s}
		}
		answer(w, list)
	})
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }
	mux.HandleFunc("GET /readyz", ok)
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		for verb, n := range calls {
			_, _ = io.WriteString(w, "floorextender_calls_total{verb=\""+verb+"\"} "+strconv.FormatInt(n.Load(), 10)+"\n")
		}
	})
	log.Printf("floorextender on %s, %d scores", *listen, len(scores))
	log.Fatal(http.ListenAndServe(*listen, mux))
}
