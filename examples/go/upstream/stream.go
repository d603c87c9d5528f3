package main

// The streams: Connect and ConnectBatch carry the same session, one event (or one batch) at a
// time. On each stream one goroutine reads events and runs the session; the handler's own
// goroutine is the only one that calls stream.Send (grpc-go allows one sender and one receiver at
// a time, not two senders). Between them a bounded channel: when the node does not read our
// commands, Send blocks on HTTP/2 flow control, the channel fills, the reader stops calling Recv,
// and the node's flow control window stops the node. Backpressure, not an unbounded buffer.

import (
	"context"
	"errors"
	"io"
	"log"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/peer"

	pb "persistentparadoxplex/examples/go/ppp/v1"
)

const (
	// An ack goes out once ackEvery events were processed since the last one, or ackDelay after
	// the first event processed since the last one, whichever comes first.
	//
	// That is cheap: an Ack is cumulative ("every event up to event_seq"), so one message of a
	// few bytes covers hundreds of events, and a busy stream sends at most one per 256 events
	// (well under 1% of its messages); a quiet stream sends at most one per 50 ms, and none at
	// all when nothing happens. In exchange the node keeps only the events of the last 50 ms or
	// so, and after a broken stream it hands out again exactly those.
	ackEvery = 256
	ackDelay = 50 * time.Millisecond
	// How many answered events (or batches) may wait for the sender: room to absorb a burst
	// while Send waits for the network, small enough to stop reading soon when it stays stuck.
	queueLength = 128
)

// answered is what the reader hands the sender: the commands answering some events, and which.
type answered struct {
	commands []*pb.UpstreamCommand
	events   int    // how many events they answer (some events need no command)
	lastSeq  uint64 // event_seq of the last of those events
}

// Upstream is the ppp.v1.Upstream service.
type Upstream struct {
	pb.UnimplementedUpstreamServer
	greet bool
	name  string
	// Closed when the grace period after SIGTERM is over: the streams still open end their side
	// then, cleanly (status OK). Left to GracefulStop they would never end (it waits for every
	// handler); left to Stop they would be cut.
	stopping chan struct{}
	open     atomic.Int64 // streams open now
}

// Connect answers one node's events with commands, until either side ends the stream.
func (u *Upstream) Connect(stream pb.Upstream_ConnectServer) error {
	session := NewSession(u.greet, u.name)
	recv := func() (answered, error) {
		event, err := stream.Recv()
		if err != nil {
			return answered{}, err
		}
		a := answered{commands: session.Handle(event)}
		// An event without event_seq (from a node older than acks) cannot be acknowledged.
		if event.GetEventSeq() > 0 {
			a.events, a.lastSeq = 1, event.GetEventSeq()
		}
		return a, nil
	}
	write := func(commands []*pb.UpstreamCommand) error {
		for _, c := range commands {
			if err := stream.Send(c); err != nil {
				return err
			}
		}
		return nil
	}
	return u.serve("Connect", session, stream.Context(), recv, write)
}

// ConnectBatch is Connect with events and commands in batches: the events of a batch are handled
// in order, and everything that answers them (with the ack when one is due) goes back as one
// batch. A batch that answers nothing sends nothing.
func (u *Upstream) ConnectBatch(stream pb.Upstream_ConnectBatchServer) error {
	session := NewSession(u.greet, u.name)
	recv := func() (answered, error) {
		batch, err := stream.Recv()
		if err != nil {
			return answered{}, err
		}
		var a answered
		for _, event := range batch.GetEvents() {
			a.commands = append(a.commands, session.Handle(event)...)
			if event.GetEventSeq() > 0 { // see Connect
				a.events++
				a.lastSeq = event.GetEventSeq()
			}
		}
		return a, nil
	}
	write := func(commands []*pb.UpstreamCommand) error {
		return stream.Send(&pb.UpstreamCommandBatch{Commands: commands})
	}
	return u.serve("ConnectBatch", session, stream.Context(), recv, write)
}

// serve runs one stream: recv (read one event or batch and answer it) in a goroutine of its own,
// write (send commands, in order) here, with the acks in between.
func (u *Upstream) serve(rpc string, session *Session, ctx context.Context, recv func() (answered, error), write func([]*pb.UpstreamCommand) error) error {
	u.open.Add(1)
	who := "?"
	if p, ok := peer.FromContext(ctx); ok {
		who = p.Addr.String()
	}
	debugf("%s stream from %s opened", rpc, who)
	var why string
	defer func() {
		u.open.Add(-1)
		log.Printf("stream from node %s (%s) ended: %s", session.NodeID(), who, why)
	}()

	queue := make(chan answered, queueLength)
	done := make(chan struct{}) // closed when this handler returns: the reader gives up
	defer close(done)
	var readErr error // set before queue is closed
	go func() {
		defer close(queue)
		for {
			a, err := recv()
			if err != nil {
				readErr = err
				return
			}
			select {
			case queue <- a:
			case <-done:
				return
			}
		}
	}()

	var (
		unacked  int         // events processed and answered since the last ack
		lastSeq  uint64      // the last of them
		since    time.Time   // when the first of them was processed
		ackTimer *time.Timer // runs while unacked > 0
		ackDue   <-chan time.Time
	)
	// takeAck is the ack for everything processed so far (nil when there is nothing to ack), and
	// starts counting again.
	takeAck := func() *pb.UpstreamCommand {
		if ackTimer != nil {
			ackTimer.Stop()
			ackTimer, ackDue = nil, nil
		}
		if unacked == 0 {
			return nil
		}
		unacked = 0
		return &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Ack{Ack: &pb.Ack{EventSeq: lastSeq}}}
	}
	// finish sends the last ack, so that the node need not keep (or replay) what we processed.
	finish := func(reason string) error {
		why = reason
		if ack := takeAck(); ack != nil {
			return write([]*pb.UpstreamCommand{ack})
		}
		return nil
	}

	for {
		select {
		case a, ok := <-queue:
			if !ok { // the reader is done
				if errors.Is(readErr, io.EOF) {
					// The node ended its side (it drains, or dropped this upstream): end ours,
					// as the protocol asks, by returning (status OK).
					return finish("the node ended its side")
				}
				why = readErr.Error()
				return readErr
			}
			commands := a.commands
			if a.events > 0 {
				if unacked == 0 {
					since = time.Now()
				}
				unacked += a.events
				lastSeq = a.lastSeq
				if unacked >= ackEvery || time.Since(since) >= ackDelay {
					// After the commands that answered those events, in the same write: the
					// node learns they were processed only once their answers are on the way.
					commands = append(commands, takeAck())
				} else if ackTimer == nil {
					ackTimer = time.NewTimer(ackDelay - time.Since(since))
					ackDue = ackTimer.C
				}
			}
			if len(commands) > 0 {
				if err := write(commands); err != nil {
					why = "sending: " + err.Error()
					return err
				}
			}
		case <-ackDue:
			ackTimer, ackDue = nil, nil
			if ack := takeAck(); ack != nil {
				if err := write([]*pb.UpstreamCommand{ack}); err != nil {
					why = "sending: " + err.Error()
					return err
				}
			}
		case <-u.stopping:
			return finish("stopping")
		case <-ctx.Done():
			why = "cancelled"
			return nil // the call is gone already: its status is no one's to read
		}
	}
}
