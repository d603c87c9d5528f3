package main

// The session: what this upstream answers to each event. Everything about the protocol's
// meaning is here; stream.go only carries events in and commands out.

import (
	"fmt"
	"log"
	"sort"
	"strings"
	"sync/atomic"

	pb "persistentparadoxplex/examples/go/ppp/v1"
)

// Help is word for word the Rust and Python upstreams' answer to /help, so that clients cannot
// tell the three apart but by /whoami.
const Help = "commands: /whoami, /label k=v ..., /broadcast text, /to <socket-id> text, /close, /help; anything else is echoed"

// Session is one node's stream (Connect or ConnectBatch): it turns the node's events into
// commands.
//
// Its only state is pending, the sockets waiting to be told the receipt of a command they asked
// for. Receipts come back on the stream that sent the command, so a per-stream map is enough, and
// the ids need only be unique within the stream. Handle is called from the stream's one reading
// goroutine only, so none of this needs a lock.
type Session struct {
	greet   bool
	name    string            // shown by /whoami: "(go)" unless --name says otherwise
	pending map[string]string // command_id -> the socket to tell about its receipt
	nextID  uint64
	nodeID  atomic.Value // string, set by hello; read by the stream's end-of-stream log line
}

// NewSession is a session for a new stream.
func NewSession(greet bool, name string) *Session {
	s := &Session{greet: greet, name: name, pending: map[string]string{}}
	s.nodeID.Store("?")
	return s
}

// NodeID is the node's id from its hello, "?" before it.
func (s *Session) NodeID() string { return s.nodeID.Load().(string) }

// Handle returns the commands answering one event (none, one or several), in order.
func (s *Session) Handle(event *pb.NodeEvent) []*pb.UpstreamCommand {
	if event.GetRedelivered() {
		// Sent before on a stream that broke before its ack: this upstream or another may have
		// answered it already. Echoing twice is harmless here; a real upstream drops duplicates
		// by (socket_id, seq) or makes its handlers idempotent.
		debugf("redelivered event %d (%s)", event.GetEventSeq(), kind(event))
	}
	switch e := event.GetEvent().(type) {
	case *pb.NodeEvent_Hello:
		h := e.Hello
		s.nodeID.Store(h.GetNodeId())
		log.Printf("hello from node %s (cluster %s, version %s, run %s)", h.GetNodeId(), h.GetCluster(), h.GetVersion(), h.GetRunId())
	case *pb.NodeEvent_Opened:
		sock := e.Opened.GetSocket()
		log.Printf("opened %s from %s on node %s", sock.GetId(), sock.GetRemoteAddr(), sock.GetNodeId())
		// A socket announced again (resumed) was greeted when it first opened.
		if s.greet && !e.Opened.GetResumed() {
			return []*pb.UpstreamCommand{send(sock.GetId(), fmt.Sprintf("welcome, you are %s. %s", sock.GetId(), Help))}
		}
	case *pb.NodeEvent_Data:
		return []*pb.UpstreamCommand{s.data(e.Data)}
	case *pb.NodeEvent_Closed:
		log.Printf("closed %s: %s", e.Closed.GetSocketId(), e.Closed.GetReason())
	case *pb.NodeEvent_Result:
		return s.result(e.Result)
	}
	return nil
}

// data is the answer to one message from a socket: a typed command, or the echo. This and
// result are the whole upstream; the rest is plumbing.
func (s *Session) data(d *pb.SocketData) *pb.UpstreamCommand {
	// Lossy like the Rust and Python upstreams: a message that is not UTF-8 is simply echoed,
	// and invalid bytes that end up in a string field (a label, a socket id) are replaced, since
	// protobuf strings must be UTF-8.
	text := strings.ToValidUTF8(string(d.GetPayload()), "\uFFFD")
	verb, rest, _ := strings.Cut(text, " ")
	me := d.GetSocketId()
	switch verb {
	case "/help":
		return send(me, Help)
	case "/whoami":
		shown := make([]string, 0, len(d.GetLabels()))
		for k, v := range d.GetLabels() {
			shown = append(shown, k+"="+v)
		}
		sort.Strings(shown)
		// The name goes last: clients parse the id as what stands between "you are " and the
		// first comma, as they do with the Rust upstream's answer.
		return send(me, fmt.Sprintf("you are %s, seq %d, labels [%s] (%s)", me, d.GetSeq(), strings.Join(shown, ","), s.name))
	case "/label":
		labels := map[string]string{}
		for _, kv := range strings.Fields(rest) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				labels[k] = v // an empty value removes the label (merge mode)
			}
		}
		return s.tracked(me, &pb.UpstreamCommand{Command: &pb.UpstreamCommand_SetLabels{
			SetLabels: &pb.SetLabels{SocketId: me, Labels: labels},
		}})
	case "/broadcast":
		return &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Broadcast{
			Broadcast: &pb.Broadcast{Scope: pb.Scope_SCOPE_ALL, Payload: []byte("broadcast from " + me + ": " + rest)},
		}}
	case "/to":
		target, message, _ := strings.Cut(rest, " ")
		return s.tracked(me, &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Send{
			Send: &pb.Send{SocketId: target, Payload: []byte("from " + me + ": " + message)},
		}})
	case "/close":
		return &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Close{
			Close: &pb.Close{SocketId: me, Reason: "asked for it"},
		}}
	default:
		// The payload back as it came (bytes, not the decoded text): a drop-in for the Rust echo.
		return &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Send{
			Send: &pb.Send{SocketId: me, Payload: d.GetPayload()},
		}}
	}
}

// result tells the socket that asked for a command how it went.
func (s *Session) result(r *pb.CommandResult) []*pb.UpstreamCommand {
	socket, ok := s.pending[r.GetCommandId()]
	if !ok {
		return nil
	}
	delete(s.pending, r.GetCommandId())
	status, ok := pb.Status_name[int32(r.GetStatus())]
	if !ok { // a status newer than this code
		status = "unknown"
	}
	return []*pb.UpstreamCommand{send(socket, fmt.Sprintf("receipt %s: %s %s", r.GetCommandId(), status, r.GetDetail()))}
}

// tracked gives command a command_id ("echo-1", "echo-2", ... per stream), whose receipt is
// reported to socket.
func (s *Session) tracked(socket string, command *pb.UpstreamCommand) *pb.UpstreamCommand {
	s.nextID++
	command.CommandId = fmt.Sprintf("echo-%d", s.nextID)
	s.pending[command.CommandId] = socket
	return command
}

// kind is the name of an event's kind, for the logs: "hello", "opened", "data", ...
func kind(event *pb.NodeEvent) string {
	switch event.GetEvent().(type) {
	case *pb.NodeEvent_Hello:
		return "hello"
	case *pb.NodeEvent_Opened:
		return "opened"
	case *pb.NodeEvent_Data:
		return "data"
	case *pb.NodeEvent_Closed:
		return "closed"
	case *pb.NodeEvent_Result:
		return "result"
	}
	return "unknown"
}

// send is a send of text to one socket, without receipt.
func send(socketID, text string) *pb.UpstreamCommand {
	return &pb.UpstreamCommand{Command: &pb.UpstreamCommand_Send{Send: &pb.Send{SocketId: socketID, Payload: []byte(text)}}}
}
