// vcsim for rehost's tests: govmomi 0.24.2's simulator (Debian's golang-github-vmware-govmomi-dev
// ships simulator/ but no vcsim command). Built and started by rehost/testkit/vcsim.py:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim main.go
//
// It serves a vCenter model (one datacenter, one cluster, one datastore) on -l and prints
// one JSON line on stdout once it listens: the URL and, per datastore, its local folder
// (the testkit's CBT shim reads the disk files there). It runs until SIGTERM or SIGINT,
// then removes the datastore folders.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "address to listen on")
	vms := flag.Int("vm", 1, "VMs per host and per cluster's resource pool")
	hosts := flag.Int("host", 1, "hosts per cluster")
	useTLS := flag.Bool("tls", false, "serve HTTPS (a self-signed certificate)")
	flag.Parse()

	model := simulator.VPX()
	model.Machine = *vms
	model.ClusterHost = *hosts
	model.Datastore = 1
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *useTLS {
		model.Service.TLS = new(tls.Config)
	}
	server := model.Service.NewServer()

	stores := map[string]string{}
	for _, ref := range simulator.Map.All("Datastore") {
		ds := ref.(*simulator.Datastore)
		stores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	u := *server.URL
	u.User = nil
	line, _ := json.Marshal(map[string]interface{}{"url": u.String(), "datastores": stores})
	fmt.Println(string(line))
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	server.Close()
	model.Remove()
}
