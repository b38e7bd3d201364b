// Command deviceplugin is a Kubernetes device plugin for nvidia.com/gpu over a GPU topology described in a
// file instead of a driver: it speaks the real device-plugin API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1)
// to a real kubelet, and answers as NVIDIA's k8s-device-plugin (v0.20.0, internal/plugin/server.go) does with
// its defaults (deviceIDStrategy uuid, deviceListStrategy envvar, no CDI, no device specs):
//
//   - Register with the kubelet's registration socket (resource nvidia.com/gpu, version v1beta1,
//     GetPreferredAllocationAvailable: true), and again whenever the kubelet restarts (it recreates
//     kubelet.sock and removes every plugin socket; NVIDIA's plugin watches for that with fsnotify, this one
//     polls every 200 ms);
//   - ListAndWatch: every GPU of the topology, Healthy, ID = its UUID, with its NUMA node as the topology hint
//     (numaNode in the file; none where it is unknown);
//   - GetPreferredAllocation: NVIDIA's alignedAlloc: go-gpuallocator's devices built from NVML answers
//     (gpuallocator.NewDevices over package nvmlmock, the same answers the differential test feeds the
//     gpuallocator command), DeviceList.Filter of the available and must-include IDs in the order the
//     kubelet sent them, then gpuallocator.NewBestEffortPolicy().Allocate;
//   - Allocate: NVIDIA_VISIBLE_DEVICES = the allocated IDs joined by commas (apiEnvs); unknown IDs refused.
//
// The file is one topology of the gpuallocator command's input (nvmlmock.Topology): the GPUs' uuid fields
// are the device IDs. Every answer is logged as one JSON line on stdout, so a test can read what the kubelet
// asked and what the plugin said.
//
//	deviceplugin --topology FILE [--plugin-dir /var/lib/kubelet/device-plugins/] [--endpoint NAME]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"toposcale.test/gpuallocator/nvmlmock"
)

const resourceName = "nvidia.com/gpu"

var logMu sync.Mutex

// event logs one JSON line on stdout.
func event(kind string, fields map[string]any) {
	fields["event"] = kind
	fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
	line, err := json.Marshal(fields)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"event":"log-error","error":%q}`, err.Error()))
	}
	logMu.Lock()
	defer logMu.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices gpuallocator.DeviceList
	api     []*pluginapi.Device
	known   map[string]bool
	policy  gpuallocator.Policy
	stop    chan struct{}
}

func newPlugin(t nvmlmock.Topology) (*plugin, error) {
	devices, err := gpuallocator.NewDevices(gpuallocator.WithNvmlLib(nvmlmock.New(t)))
	if err != nil {
		return nil, fmt.Errorf("go-gpuallocator refused the topology: %w", err)
	}
	p := &plugin{devices: devices, known: map[string]bool{}, policy: gpuallocator.NewBestEffortPolicy(),
		stop: make(chan struct{})}
	for _, g := range t.GPUs {
		d := &pluginapi.Device{ID: g.UUID, Health: pluginapi.Healthy}
		if g.NumaNode != nil && *g.NumaNode >= 0 {
			d.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(*g.NumaNode)}}}
		}
		p.api = append(p.api, d)
		p.known[g.UUID] = true
	}
	return p, nil
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	ids := make([]string, 0, len(p.api))
	for _, d := range p.api {
		ids = append(ids, d.ID)
	}
	event("list-and-watch", map[string]any{"devices": ids})
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: p.api}); err != nil {
		return err
	}
	// The devices never change (no health checks: there is no driver to ask).
	select {
	case <-p.stop:
	case <-s.Context().Done():
	}
	return nil
}

// GetPreferredAllocation is NVIDIA's alignedAlloc (internal/rm/nvml_manager.go) for whole GPUs.
func (p *plugin) GetPreferredAllocation(_ context.Context, r *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, req := range r.ContainerRequests {
		available, err := p.devices.Filter(req.AvailableDeviceIDs)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "unable to retrieve list of available devices: %v", err)
		}
		required, err := p.devices.Filter(req.MustIncludeDeviceIDs)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "unable to retrieve list of required devices: %v", err)
		}
		var ids []string
		for _, d := range p.policy.Allocate(available, required, int(req.AllocationSize)) {
			if d == nil {
				// The policy pads with nil where it cannot fill the request; NVIDIA's plugin would fail on it.
				return nil, status.Errorf(codes.Internal, "go-gpuallocator returned no device for part of the request")
			}
			ids = append(ids, d.UUID)
		}
		event("get-preferred-allocation", map[string]any{"available": req.AvailableDeviceIDs,
			"mustInclude": req.MustIncludeDeviceIDs, "size": req.AllocationSize, "preferred": ids})
		resp.ContainerResponses = append(resp.ContainerResponses,
			&pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

func (p *plugin) Allocate(_ context.Context, r *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, req := range r.ContainerRequests {
		for _, id := range req.DevicesIds {
			if !p.known[id] {
				return nil, status.Errorf(codes.InvalidArgument, "invalid allocation request for '%s': unknown device: %s", resourceName, id)
			}
		}
		event("allocate", map[string]any{"devices": req.DevicesIds})
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(req.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve starts the gRPC server on the plugin's socket and registers with the kubelet.
func serve(p *plugin, dir, endpoint string) (*grpc.Server, error) {
	sock := filepath.Join(dir, endpoint)
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, filepath.Base(pluginapi.KubeletSocket)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     endpoint,
		ResourceName: resourceName,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	}, grpc.WaitForReady(true))
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("registering with the kubelet: %w", err)
	}
	event("registered", map[string]any{"socket": sock})
	return srv, nil
}

// identity of a file (inode and change time): a restarted kubelet makes a new kubelet.sock.
func identity(path string) (string, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", false
	}
	return fmt.Sprintf("%d:%d.%d", st.Ino, st.Ctim.Sec, st.Ctim.Nsec), true
}

func main() {
	topo := flag.String("topology", "", "the GPUs: one topology of the gpuallocator command's input (JSON)")
	dir := flag.String("plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	endpoint := flag.String("endpoint", "toposcale-gpu.sock", "this plugin's socket name in --plugin-dir")
	flag.Parse()
	if *topo == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: deviceplugin --topology FILE [--plugin-dir DIR] [--endpoint NAME]")
		os.Exit(2)
	}
	raw, err := os.ReadFile(*topo)
	if err != nil {
		fmt.Fprintf(os.Stderr, "deviceplugin: %v\n", err)
		os.Exit(2)
	}
	var t nvmlmock.Topology
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		fmt.Fprintf(os.Stderr, "deviceplugin: reading %s: %v\n", *topo, err)
		os.Exit(2)
	}
	p, err := newPlugin(t)
	if err != nil {
		fmt.Fprintf(os.Stderr, "deviceplugin: %v\n", err)
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	kubeletSock := filepath.Join(*dir, filepath.Base(pluginapi.KubeletSocket))
	ownSock := filepath.Join(*dir, *endpoint)
	var srv *grpc.Server
	registeredWith := ""
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastErr := ""
	for {
		select {
		case <-sigs:
			close(p.stop)
			if srv != nil {
				srv.Stop()
			}
			_ = os.Remove(ownSock)
			event("stopped", map[string]any{})
			return
		case <-tick.C:
		}
		id, ok := identity(kubeletSock)
		_, ownErr := os.Stat(ownSock)
		if srv != nil && ok && id == registeredWith && ownErr == nil {
			continue
		}
		if !ok {
			continue // no kubelet (yet, or restarting): wait for its socket
		}
		if srv != nil {
			// The kubelet restarted (a new kubelet.sock; it also removed ours): serve and register again.
			// srv.Stop ends the old ListAndWatch streams (their contexts are cancelled).
			event("kubelet-restarted", map[string]any{})
			srv.Stop()
			srv = nil
		}
		s, err := serve(p, *dir, *endpoint)
		if err != nil {
			if msg := err.Error(); msg != lastErr && !errors.Is(err, context.Canceled) {
				event("register-failed", map[string]any{"error": msg})
				lastErr = msg
			}
			continue
		}
		srv, registeredWith, lastErr = s, id, ""
	}
}
