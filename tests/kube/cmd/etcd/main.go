// etcd at the version k8s.io/kubernetes v1.37.2 pins (go.etcd.io/etcd/server/v3 v3.7.0), built from its own
// etcdmain package so the binary is the upstream etcd server, flags and all.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
