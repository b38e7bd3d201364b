// Command gpuallocator runs NVIDIA's go-gpuallocator best-effort policy, the code the NVIDIA device plugin
// runs for GetPreferredAllocation on whole GPUs, over topologies and free sets given as JSON on stdin.
//
// The devices are built the way the device plugin builds them (internal/rm/nvml_manager.go, alignedAlloc):
// gpuallocator.NewDevices(gpuallocator.WithNvmlLib(lib)), then DeviceList.Filter(available UUIDs, in the
// order given), then gpuallocator.NewBestEffortPolicy().Allocate(available, required, size). Only lib is
// ours (package nvmlmock, shared with the device plugin of deviceplugin/): go-nvml's mock package answering
// what a real NVML would (device count and handles, names, UUIDs, PCI bus IDs, GetTopologyCommonAncestor per
// pair, GetNvLinkState / GetNvLinkRemotePciInfo per link), as go-gpuallocator's own tests do. So the link
// derivation (which NVML answer becomes which P2PLink, how NVLinks are counted by remote bus ID) is NVIDIA's
// too.
//
// Input:
//
//	{"topologies": [{"name": "...", "gpus": [{"uuid": "GPU-0", "busId": "00000000:01:00.0", "name": "...",
//	                  "nvlinks": [{"remotePci": "00000000:02:00.0"}, {"state": 0}, {"error": "NotSupported"}]}],
//	                 "commonAncestor": [[0, 40], [40, 0]]}],
//	 "queries": [{"topology": 0, "available": [3, 0, 2], "required": [], "size": 2}]}
//
// nvlinks lists the answers for links 0, 1, ...: GetNvLinkState's (state: 1 enabled, the default, 0
// disabled; or error: "NotSupported", "InvalidArgument", "NoPermission", any other name reads as Unknown) and
// GetNvLinkRemotePciInfo's (remotePci, the bus ID; or remotePciError); links past the list answer
// NotSupported to both. commonAncestor[i][j] is the nvml.GpuTopologyLevel (0 INTERNAL, 10 SINGLE,
// 20 MULTIPLE, 30 HOSTBRIDGE, 40 NODE, 50 SYSTEM) that GetTopologyCommonAncestor answers for GPU i and j.
// available and required are GPU indices; the device plugin gets them from the kubelet in map order.
//
// Output: {"versions": {module: version}, "topologies": [{"name", "links": [[["P2PLinkSameCPU", ...]]]}],
// "answers": [[indices in the order Allocate returned them; -1 for a nil (padding) device]]}; a topology
// that go-gpuallocator refuses to build is reported in "error" and the command exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"

	"toposcale.test/gpuallocator/nvmlmock"
)

type queryIn struct {
	Topology  int   `json:"topology"`
	Available []int `json:"available"`
	Required  []int `json:"required"`
	Size      int   `json:"size"`
}

type input struct {
	Topologies []nvmlmock.Topology `json:"topologies"`
	Queries    []queryIn           `json:"queries"`
}

type topologyOut struct {
	Name  string       `json:"name"`
	Links [][][]string `json:"links"`
}

type output struct {
	Versions   map[string]string `json:"versions"`
	Topologies []topologyOut     `json:"topologies"`
	Answers    [][]int           `json:"answers"`
	Error      string            `json:"error,omitempty"`
}

func versions() map[string]string {
	out := map[string]string{}
	if info, ok := debug.ReadBuildInfo(); ok {
		out["go"] = info.GoVersion
		for _, m := range info.Deps {
			out[m.Path] = m.Version
		}
	}
	return out
}

func run(in input) (output, error) {
	out := output{Versions: versions(), Answers: make([][]int, 0, len(in.Queries))}
	lists := make([]gpuallocator.DeviceList, len(in.Topologies))
	for ti, t := range in.Topologies {
		n := len(t.GPUs)
		if len(t.CommonAncestor) != n {
			return out, fmt.Errorf("topology %d (%s): commonAncestor has %d rows for %d GPUs", ti, t.Name, len(t.CommonAncestor), n)
		}
		devices, err := gpuallocator.NewDevices(gpuallocator.WithNvmlLib(nvmlmock.New(t)))
		if err != nil {
			return out, fmt.Errorf("topology %d (%s): %w", ti, t.Name, err)
		}
		lists[ti] = devices
		links := make([][][]string, n)
		for i, d := range devices {
			links[i] = make([][]string, n)
			for j := range links[i] {
				links[i][j] = []string{}
				for _, l := range d.Links[j] {
					links[i][j] = append(links[i][j], l.Type.String())
				}
			}
		}
		out.Topologies = append(out.Topologies, topologyOut{Name: t.Name, Links: links})
	}
	policy := gpuallocator.NewBestEffortPolicy()
	for qi, q := range in.Queries {
		if q.Topology < 0 || q.Topology >= len(lists) {
			return out, fmt.Errorf("query %d: no topology %d", qi, q.Topology)
		}
		all := lists[q.Topology]
		uuids := func(idx []int) ([]string, error) {
			ids := make([]string, 0, len(idx))
			for _, i := range idx {
				if i < 0 || i >= len(all) {
					return nil, fmt.Errorf("query %d: no GPU %d", qi, i)
				}
				ids = append(ids, all[i].UUID)
			}
			return ids, nil
		}
		availableIDs, err := uuids(q.Available)
		if err != nil {
			return out, err
		}
		requiredIDs, err := uuids(q.Required)
		if err != nil {
			return out, err
		}
		// As the device plugin does: Filter keeps the order of the IDs it is given.
		available, err := all.Filter(availableIDs)
		if err != nil {
			return out, fmt.Errorf("query %d: %w", qi, err)
		}
		required, err := all.Filter(requiredIDs)
		if err != nil {
			return out, fmt.Errorf("query %d: %w", qi, err)
		}
		got := policy.Allocate(available, required, q.Size)
		answer := make([]int, 0, len(got))
		for _, d := range got {
			if d == nil {
				answer = append(answer, -1)
			} else {
				answer = append(answer, d.Index)
			}
		}
		out.Answers = append(out.Answers, answer)
	}
	return out, nil
}

func main() {
	var in input
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		fmt.Fprintf(os.Stderr, "gpuallocator: reading the input: %v\n", err)
		os.Exit(2)
	}
	out, err := run(in)
	code := 0
	if err != nil {
		out.Error = err.Error()
		code = 1
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "gpuallocator: writing the answer: %v\n", err)
		os.Exit(2)
	}
	os.Exit(code)
}
