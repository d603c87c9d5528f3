// Command ppp-go-upstream is the example echo upstream of PersistentParadoxPlex, in Go, with
// grpc-go as it comes: grpc.NewServer() without a single option.
//
// It behaves like the Rust example (src/echo.rs) and the Python one (examples/python), so any of
// them can stand in for the others: it echoes every message back to its socket as it is, and
// understands a few commands typed by the client, to show what an upstream can do:
//
//	typed                 what the upstream does
//	/help                 replies with this list
//	/whoami               replies with the socket id, its seq and its labels, tagged "(go)"
//	/label k=v ...        set_labels (merge) on the socket; an empty value removes the label
//	/broadcast text       broadcast to every socket of the cluster
//	/to <socket> text     send to another socket, and reports the receipt
//	/close                close the socket
//	anything else         send it back
//
// It is stateless about sockets: who is talking comes with every data event (labels). The only
// state is per stream: which command_id belongs to which socket, to report receipts. It
// acknowledges the events it processed (Ack), so that after a broken stream a node hands out
// again only the few it had not acknowledged, and it serves ConnectBatch as well as Connect.
//
// It also serves the standard gRPC health service (SERVING for "ppp.v1.Upstream" and for ""),
// which the node polls for readiness. On SIGTERM (or Ctrl-C) it answers NOT_SERVING, so that
// nodes stop sending it events, and stops after a grace period in which open streams keep
// working.
//
//	ppp-go-upstream --listen 127.0.0.1:50053        # or PPP_GO_LISTEN=...
//	cargo run -- --upstream http://127.0.0.1:50053  # a node that uses it
//
// session.go is what it answers, stream.go how events come in and commands and acks go out.
// docs/protocol.md describes the protocol; proto/ppp/v1/upstream.proto is its definition.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "persistentparadoxplex/examples/go/ppp/v1"
)

// UpstreamService is the service name nodes ask the health service about (UPSTREAM_SERVICE in
// the Rust code).
const UpstreamService = "ppp.v1.Upstream"

var verbose bool

// debugf logs only with --verbose.
func debugf(format string, args ...any) {
	if verbose {
		log.Printf("debug: "+format, args...)
	}
}

func main() {
	listenDefault := os.Getenv("PPP_GO_LISTEN")
	if listenDefault == "" {
		listenDefault = "0.0.0.0:50053"
	}
	listen := flag.String("listen", listenDefault, "address to serve gRPC on, host:port (env PPP_GO_LISTEN; default 0.0.0.0:50053)")
	nameDefault := os.Getenv("PPP_GO_NAME")
	if nameDefault == "" {
		nameDefault = "go"
	}
	name := flag.String("name", nameDefault, "what /whoami answers end with, in parentheses (env PPP_GO_NAME; default \"go\")")
	greet := flag.Bool("greet", false, "greet every socket when it opens")
	grace := flag.Float64("grace", 5, "seconds open streams keep working after SIGTERM")
	flag.BoolVar(&verbose, "verbose", false, "log debug lines too (streams opening, redelivered events)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "The PersistentParadoxPlex echo upstream, in Go.\n\nusage: %s [flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetOutput(os.Stderr)

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ppp-go-upstream: cannot listen on %s: %v\n", *listen, err)
		os.Exit(1)
	}

	// No options: the stock settings are the point. grpc-go's defaults suit a node: it accepts
	// events up to 4 MiB (a node sends them up to its --max-frame, 1 MiB by default), it sends
	// commands of any size, its keepalive policy allows the node's pings, and Go sets
	// TCP_NODELAY on every connection.
	server := grpc.NewServer()
	upstream := &Upstream{greet: *greet, name: *name, stopping: make(chan struct{})}
	pb.RegisterUpstreamServer(server, upstream)
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(server, healthServer)
	for _, service := range []string{"", UpstreamService} {
		healthServer.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	}

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	log.Printf("serving ppp.v1.Upstream and grpc.health.v1.Health on %s as %s", listener.Addr(), *name)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-signals:
		log.Printf("stopping (%v): health NOT_SERVING, %.1f s grace for open streams", sig, *grace)
	case err := <-served:
		log.Fatalf("serving failed: %v", err)
	}

	// NOT_SERVING first, while everything else keeps working: nodes see it on their next health
	// check (every 2 s by default) and stop sending events, and the events already on their way
	// are still answered. After the grace period (or as soon as no stream is open) the open
	// streams end their side, cleanly, and the server stops; a second SIGTERM cuts the grace
	// short.
	healthServer.Shutdown()
	deadline := time.After(time.Duration(*grace * float64(time.Second)))
	tick := time.NewTicker(100 * time.Millisecond)
wait:
	for upstream.open.Load() > 0 {
		select {
		case <-deadline:
			break wait
		case <-signals:
			break wait
		case <-tick.C:
		}
	}
	tick.Stop()
	close(upstream.stopping)
	// GracefulStop waits for every handler to return, which they do now; one second backs it up
	// (a stream whose node stopped reading, blocked in Send, is cut).
	stopped := make(chan struct{})
	go func() { server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Second):
		server.Stop()
		<-stopped
	}
	log.Printf("stopped")
}
