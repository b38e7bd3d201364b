// labels.Parse of k8s.io/apimachinery (the version k8s.io/kubernetes v1.37.2 uses: v0.37.2, pinned by this
// module's go.mod) as a command, for the differential test of the adapter's selector parser
// (tests/adapter/test_selectors_vs_go.py; built by scripts/labelsparse.sh).
//
// JSON lines on stdin, one answer line on stdout per request line, in order:
//
//	{"labelsets": [{"k": "v", ...}, ...]}  the label sets later selectors are matched against; answers
//	                                       {"labelsets": N}
//	{"selector": "..."}                    labels.Parse(selector): {"ok": true, "requirements": [[key, op,
//	                                       [values...]], ...], "matched": [indices of the label sets]} or
//	                                       {"ok": false, "error": "..."}
//	{"versions": true}                     {"apimachinery": "v0.37.2", "go": "go1.26.x"}
//
// Operators are written as the adapter writes them: "=" (also for "=="), "!=", "in", "notin", "exists",
// "!", ">" and "<"; values sorted, as labels.Parse keeps them (a set).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

type request struct {
	Selector  *string             `json:"selector"`
	LabelSets []map[string]string `json:"labelsets"`
	Versions  bool                `json:"versions"`
}

type answer struct {
	OK           bool     `json:"ok"`
	Error        string   `json:"error,omitempty"`
	Requirements [][3]any `json:"requirements,omitempty"`
	Matched      []int    `json:"matched"`
}

var ops = map[selection.Operator]string{
	selection.Equals: "=", selection.DoubleEquals: "=", selection.NotEquals: "!=", selection.In: "in",
	selection.NotIn: "notin", selection.Exists: "exists", selection.DoesNotExist: "!",
	selection.GreaterThan: ">", selection.LessThan: "<",
}

func apimachineryVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range info.Deps {
		if d.Path == "k8s.io/apimachinery" {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "unknown"
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	var sets []labels.Set
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "labelsparse: bad request line: %v\n", err)
			os.Exit(2)
		}
		switch {
		case req.Versions:
			_ = enc.Encode(map[string]string{"apimachinery": apimachineryVersion(), "go": runtime.Version()})
		case req.LabelSets != nil:
			sets = sets[:0]
			for _, s := range req.LabelSets {
				sets = append(sets, labels.Set(s))
			}
			_ = enc.Encode(map[string]int{"labelsets": len(sets)})
		case req.Selector != nil:
			sel, err := labels.Parse(*req.Selector)
			if err != nil {
				_ = enc.Encode(answer{OK: false, Error: err.Error()})
				continue
			}
			a := answer{OK: true, Matched: []int{}}
			reqs, _ := sel.Requirements()
			for _, r := range reqs {
				values := r.ValuesUnsorted()
				sort.Strings(values)
				op, known := ops[r.Operator()]
				if !known {
					op = string(r.Operator())
				}
				a.Requirements = append(a.Requirements, [3]any{r.Key(), op, values})
			}
			for i, s := range sets {
				if sel.Matches(s) {
					a.Matched = append(a.Matched, i)
				}
			}
			_ = enc.Encode(a)
		default:
			fmt.Fprintf(os.Stderr, "labelsparse: a request needs selector, labelsets or versions: %s\n", in.Text())
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "labelsparse: reading stdin: %v\n", err)
		os.Exit(2)
	}
}
