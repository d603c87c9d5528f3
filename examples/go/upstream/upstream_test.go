package main

// End-to-end tests of the upstream over real gRPC on loopback, playing the node:
//
//	examples/go/build.sh --test      (go test, offline, in GOPATH mode)

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "persistentparadoxplex/examples/go/ppp/v1"
)

// start serves an upstream on a free loopback port, as main does; stopped at the end of the test.
func start(t *testing.T) (pb.UpstreamClient, *Upstream) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	upstream := &Upstream{name: "go", stopping: make(chan struct{})}
	pb.RegisterUpstreamServer(server, upstream)
	go server.Serve(listener)
	conn, err := grpc.Dial(listener.Addr().String(), grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); server.Stop() })
	return pb.NewUpstreamClient(conn), upstream
}

func hello(seq uint64) *pb.NodeEvent {
	return &pb.NodeEvent{EventSeq: seq, Event: &pb.NodeEvent_Hello{Hello: &pb.NodeHello{NodeId: "n1", Cluster: "c", Version: "0", RunId: "r"}}}
}

func data(seq uint64, socket string, n uint64, text string, labels map[string]string) *pb.NodeEvent {
	return &pb.NodeEvent{EventSeq: seq, Event: &pb.NodeEvent_Data{Data: &pb.SocketData{SocketId: socket, Seq: n, Payload: []byte(text), Labels: labels}}}
}

func result(seq uint64, id string) *pb.NodeEvent {
	return &pb.NodeEvent{EventSeq: seq, Event: &pb.NodeEvent_Result{Result: &pb.CommandResult{CommandId: id, Status: pb.Status_STATUS_OK}}}
}

// payloadOf is the payload of a send, "" for anything else.
func payloadOf(c *pb.UpstreamCommand) string { return string(c.GetSend().GetPayload()) }

func TestConnect(t *testing.T) {
	client, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *pb.UpstreamCommand {
		t.Helper()
		c, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, e := range []*pb.NodeEvent{hello(1), data(2, "s1", 1, "hi there", nil), data(3, "s1", 2, "/whoami", map[string]string{"b": "2", "a": "1"})} {
		if err := stream.Send(e); err != nil {
			t.Fatal(err)
		}
	}
	if got := payloadOf(recv()); got != "hi there" {
		t.Errorf("echo: %q", got)
	}
	if got := payloadOf(recv()); got != "you are s1, seq 2, labels [a=1,b=2] (go)" {
		t.Errorf("/whoami: %q", got)
	}
	// Three events processed, none acknowledged: the ack follows within 50 ms.
	start := time.Now()
	if ack := recv().GetAck(); ack.GetEventSeq() != 3 {
		t.Errorf("expected an ack of 3, got %v", ack)
	}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Errorf("the ack came after %v", waited)
	}

	stream.Send(data(4, "s1", 3, "/label user=ada junk", nil))
	label := recv()
	if label.GetCommandId() != "echo-1" || label.GetSetLabels().GetLabels()["user"] != "ada" || len(label.GetSetLabels().GetLabels()) != 1 {
		t.Errorf("/label: %v", label)
	}
	stream.Send(result(5, "echo-1"))
	if got := payloadOf(recv()); got != "receipt echo-1: STATUS_OK " {
		t.Errorf("receipt: %q", got)
	}
	if ack := recv().GetAck(); ack.GetEventSeq() != 5 {
		t.Errorf("expected an ack of 5, got %v", ack)
	}
	stream.Send(data(6, "s1", 4, "/close", nil))
	if c := recv().GetClose(); c.GetSocketId() != "s1" || c.GetReason() != "asked for it" {
		t.Errorf("/close: %v", c)
	}
	// The node ends its side: the last ack, then the end of ours, status OK.
	stream.CloseSend()
	if ack := recv().GetAck(); ack.GetEventSeq() != 6 {
		t.Errorf("expected a last ack of 6, got %v", ack)
	}
	if _, err := stream.Recv(); err == nil || err.Error() != "EOF" {
		t.Errorf("expected the end of the stream (status OK), got %v", err)
	}
}

func TestConnectAcksEvery256(t *testing.T) {
	client, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 1000 events sent at once: echoes in order, with an ack after every 256th at the latest.
	go func() {
		stream.Send(hello(1))
		for i := uint64(2); i <= 1000; i++ {
			stream.Send(data(i, "s1", i, "x", nil))
		}
	}()
	echoes, sinceAck, lastAck := 0, 0, uint64(0)
	for lastAck < 1000 {
		c, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ack := c.GetAck(); ack != nil {
			// Everything up to the ack is answered already: hello has no answer.
			if ack.GetEventSeq() != uint64(echoes)+1 {
				t.Fatalf("ack %d after %d echoes", ack.GetEventSeq(), echoes)
			}
			lastAck, sinceAck = ack.GetEventSeq(), 0
			continue
		}
		echoes++
		sinceAck++
		if sinceAck > 256 {
			t.Fatalf("%d events without an ack", sinceAck)
		}
	}
}

func TestConnectBatch(t *testing.T) {
	client, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.ConnectBatch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *pb.UpstreamCommandBatch {
		t.Helper()
		b, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	redelivered := data(3, "s1", 2, "/to s2 hey", nil)
	redelivered.Redelivered = true
	stream.Send(&pb.NodeEventBatch{Events: []*pb.NodeEvent{hello(1), data(2, "s1", 1, "one", nil), redelivered}})
	b := recv()
	if len(b.Commands) != 2 || payloadOf(b.Commands[0]) != "one" || b.Commands[1].GetSend().GetSocketId() != "s2" ||
		payloadOf(b.Commands[1]) != "from s1: hey" || b.Commands[1].GetCommandId() != "echo-1" {
		t.Fatalf("first batch: %v", b)
	}
	// Then the ack alone, 50 ms later.
	if b := recv(); len(b.Commands) != 1 || b.Commands[0].GetAck().GetEventSeq() != 3 {
		t.Fatalf("ack batch: %v", b)
	}
	// A batch that needs no answer sends nothing but, later, its ack; a batch of 300 events
	// gets its 300 echoes and the ack in one batch.
	stream.Send(&pb.NodeEventBatch{Events: []*pb.NodeEvent{{EventSeq: 4, Event: &pb.NodeEvent_Closed{Closed: &pb.SocketClosed{SocketId: "s9", Reason: "idle"}}}}})
	if b := recv(); len(b.Commands) != 1 || b.Commands[0].GetAck().GetEventSeq() != 4 {
		t.Fatalf("ack of the closed: %v", b)
	}
	var big []*pb.NodeEvent
	for i := uint64(5); i < 305; i++ {
		big = append(big, data(i, "s1", i, "x", nil))
	}
	stream.Send(&pb.NodeEventBatch{Events: big})
	b = recv()
	if len(b.Commands) != 301 || b.Commands[300].GetAck().GetEventSeq() != 304 {
		t.Fatalf("big batch: %d commands, last %v", len(b.Commands), b.Commands[len(b.Commands)-1])
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Errorf("expected the end of the stream, got %v", err)
	}
}

// After the grace period the open streams end their side with status OK.
func TestStopping(t *testing.T) {
	client, upstream := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(hello(1))
	if ack := mustRecv(t, stream).GetAck(); ack.GetEventSeq() != 1 {
		t.Fatalf("expected the ack of hello, got %v", ack)
	}
	for upstream.open.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(upstream.stopping)
	if _, err := stream.Recv(); err == nil || err.Error() != "EOF" {
		t.Errorf("expected the end of the stream (status OK), got %v", err)
	}
}

func mustRecv(t *testing.T, stream pb.Upstream_ConnectClient) *pb.UpstreamCommand {
	t.Helper()
	c, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
