// Package nvmlmock answers as the NVML of a machine with a given GPU topology would: go-nvml's mock package
// (github.com/NVIDIA/go-nvml/pkg/nvml/mock, as go-gpuallocator's own tests use it) filled from a JSON
// description. Shared by the gpuallocator command (the differential test) and the device plugin, so both
// build go-gpuallocator's devices from the same NVML answers.
package nvmlmock

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// NvLink is what NVML answers for one link of a GPU (see the gpuallocator command's input).
type NvLink struct {
	State          *int   `json:"state"`
	Error          string `json:"error"`
	RemotePci      string `json:"remotePci"`
	RemotePciError string `json:"remotePciError"`
}

// GPU is one GPU as NVML reports it; NumaNode is only read by the device plugin (its topology hint).
type GPU struct {
	UUID     string   `json:"uuid"`
	BusID    string   `json:"busId"`
	Name     string   `json:"name"`
	NvLinks  []NvLink `json:"nvlinks"`
	NumaNode *int     `json:"numaNode,omitempty"`
}

// Topology is one machine: its GPUs and NVML's GetTopologyCommonAncestor level for every pair.
type Topology struct {
	Name           string  `json:"name"`
	GPUs           []GPU   `json:"gpus"`
	CommonAncestor [][]int `json:"commonAncestor"`
}

func pciInfo(busID string) nvml.PciInfo {
	var p nvml.PciInfo
	for i := 0; i < len(busID) && i < len(p.BusId)-1; i++ {
		p.BusId[i] = int8(busID[i])
	}
	for i := 0; i < len(busID) && i < len(p.BusIdLegacy)-1; i++ {
		p.BusIdLegacy[i] = int8(busID[i])
	}
	return p
}

func nvmlError(name string) nvml.Return {
	switch name {
	case "NotSupported":
		return nvml.ERROR_NOT_SUPPORTED
	case "InvalidArgument":
		return nvml.ERROR_INVALID_ARGUMENT
	case "NoPermission":
		return nvml.ERROR_NO_PERMISSION
	default:
		return nvml.ERROR_UNKNOWN
	}
}

// New answers as the NVML of a machine with this topology would.
func New(t Topology) nvml.Interface {
	byUUID := map[string]int{}
	for i, g := range t.GPUs {
		byUUID[g.UUID] = i
	}
	devices := make([]*mock.Device, len(t.GPUs))
	for i := range t.GPUs {
		i, g := i, t.GPUs[i]
		devices[i] = &mock.Device{
			GetNameFunc: func() (string, nvml.Return) { return g.Name, nvml.SUCCESS },
			GetUUIDFunc: func() (string, nvml.Return) { return g.UUID, nvml.SUCCESS },
			GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) {
				return pciInfo(g.BusID), nvml.SUCCESS
			},
			GetTopologyCommonAncestorFunc: func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
				// other is go-nvlib's wrapper around one of our mocks: find it by UUID.
				uuid, ret := other.GetUUID()
				if ret != nvml.SUCCESS {
					return 0, ret
				}
				j, ok := byUUID[uuid]
				if !ok {
					return 0, nvml.ERROR_INVALID_ARGUMENT
				}
				return nvml.GpuTopologyLevel(t.CommonAncestor[i][j]), nvml.SUCCESS
			},
			GetNvLinkStateFunc: func(link int) (nvml.EnableState, nvml.Return) {
				if link >= len(g.NvLinks) {
					return 0, nvml.ERROR_NOT_SUPPORTED
				}
				l := g.NvLinks[link]
				if l.Error != "" {
					return 0, nvmlError(l.Error)
				}
				if l.State != nil && *l.State == 0 {
					return nvml.FEATURE_DISABLED, nvml.SUCCESS
				}
				return nvml.FEATURE_ENABLED, nvml.SUCCESS
			},
			GetNvLinkRemotePciInfoFunc: func(link int) (nvml.PciInfo, nvml.Return) {
				if link >= len(g.NvLinks) {
					return nvml.PciInfo{}, nvml.ERROR_NOT_SUPPORTED
				}
				l := g.NvLinks[link]
				if l.RemotePciError != "" {
					return nvml.PciInfo{}, nvmlError(l.RemotePciError)
				}
				return pciInfo(l.RemotePci), nvml.SUCCESS
			},
		}
	}
	return &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) { return len(devices), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(index int) (nvml.Device, nvml.Return) {
			if index < 0 || index >= len(devices) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devices[index], nvml.SUCCESS
		},
	}
}
