package itg

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Reply is one message of ITG_REPLIES: exactly one of Ready, Failed and Removed is set, as Kind says.
type Reply struct {
	Kind            ReplyKind
	ResourceManager string
	// Sequence is the reply's sequence in ITG_REPLIES: Watch(FromSequence(Sequence+1)) resumes after it.
	Sequence uint64
	// Time is when the stream stored the reply.
	Time    time.Time
	Ready   *Ready
	Failed  *Failed
	Removed *Removed
}

// AllocationID is the allocation the reply is about ("" for a failed event whose id was unreadable).
func (r *Reply) AllocationID() string {
	switch {
	case r.Ready != nil:
		return r.Ready.AllocationID
	case r.Removed != nil:
		return r.Removed.AllocationID
	case r.Failed != nil && r.Failed.AllocationID != nil:
		return *r.Failed.AllocationID
	}
	return ""
}

// SourceEventID is the event_id of the event the reply answers ("" when unreadable).
func (r *Reply) SourceEventID() string {
	switch {
	case r.Ready != nil:
		return r.Ready.SourceEventID
	case r.Removed != nil:
		return r.Removed.SourceEventID
	case r.Failed != nil && r.Failed.SourceEventID != nil:
		return *r.Failed.SourceEventID
	}
	return ""
}

// Err is a *FailedError for a failed reply, nil otherwise.
func (r *Reply) Err() error {
	if r.Failed == nil {
		return nil
	}
	return &FailedError{Failed: *r.Failed, Sequence: r.Sequence}
}

// From is where in ITG_REPLIES a read starts. The zero value is the first reply the stream holds.
type From struct {
	seq   uint64
	t     time.Time
	isNew bool
}

// FromSequence starts at stream sequence seq (a Reply's Sequence+1 resumes after it).
func FromSequence(seq uint64) From { return From{seq: seq} }

// FromTime starts at the first reply stored at or after t.
func FromTime(t time.Time) From { return From{t: t} }

// FromNow starts with the next reply published.
func FromNow() From { return From{isNew: true} }

func (f From) apply(cfg *jetstream.OrderedConsumerConfig) {
	switch {
	case f.isNew:
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	case f.seq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.seq
	case !f.t.IsZero():
		t := f.t
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	default:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
}

// DecodeError is a message of ITG_REPLIES that is not a reply of the contract.
type DecodeError struct {
	Subject  string
	Sequence uint64
	Err      error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("itg: reply %d on %s does not follow the contract: %v", e.Sequence, e.Subject, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// DecodeReply reads one reply from its subject (itg.replies.<rm>.<kind>) and payload. Unknown fields are
// refused: the worker sends exactly what the schemas list.
func DecodeReply(subject string, data []byte) (Reply, error) {
	rest, ok := strings.CutPrefix(subject, "itg.replies.")
	rm, kind, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return Reply{}, fmt.Errorf("subject %q is not itg.replies.<rm>.<kind>", subject)
	}
	r := Reply{Kind: ReplyKind(kind), ResourceManager: rm}
	var target any
	switch r.Kind {
	case KindReady:
		r.Ready = &Ready{}
		target = r.Ready
	case KindFailed:
		r.Failed = &Failed{}
		target = r.Failed
	case KindRemoved:
		r.Removed = &Removed{}
		target = r.Removed
	default:
		return Reply{}, fmt.Errorf("unknown reply kind %q", kind)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(target); err != nil {
		return Reply{}, err
	}
	return r, nil
}

func decodeMsg(m jetstream.Msg) (Reply, error) {
	var seq uint64
	var at time.Time
	if md, err := m.Metadata(); err == nil {
		seq, at = md.Sequence.Stream, md.Timestamp
	}
	r, err := DecodeReply(m.Subject(), m.Data())
	if err != nil {
		return Reply{}, &DecodeError{Subject: m.Subject(), Sequence: seq, Err: err}
	}
	r.Sequence, r.Time = seq, at
	return r, nil
}

// read delivers the replies of rm from `from`, in stream order, to fn until fn returns false or ctx ends.
// An ordered consumer filtered to rm's three reply subjects reads them: ephemeral, flow-controlled, and
// recreated by the client library after a gap or a reconnect.
func (c *Client) read(ctx context.Context, rm string, from From, fn func(Reply, error) bool) error {
	if err := ValidateResourceManager(rm); err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{
		ReplySubject(rm, KindReady), ReplySubject(rm, KindFailed), ReplySubject(rm, KindRemoved)}}
	from.apply(&cfg)
	cons, err := c.js.OrderedConsumer(ctx, RepliesStream, cfg)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return errors.Join(ErrNoRepliesStream, err)
	}
	if err != nil {
		return fmt.Errorf("itg: reading %s: %w", RepliesStream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("itg: reading %s: %w", RepliesStream, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("itg: reading %s: %w", RepliesStream, err)
		}
		if !fn(decodeMsg(m)) {
			return nil
		}
	}
}

// AwaitOption narrows an Await.
type AwaitOption func(*awaitOpts)

type awaitOpts struct {
	from    *From
	eventID string
}

// AwaitFrom reads from `from` instead of the client's own mark or lookback: for an allocation whose event
// another process published, pass where that process was (a time or a sequence it stored).
func AwaitFrom(from From) AwaitOption { return func(o *awaitOpts) { o.from = &from } }

// ForEvent returns only the reply whose source_event_id is eventID.
func ForEvent(eventID string) AwaitOption { return func(o *awaitOpts) { o.eventID = eventID } }

// Await returns the first ready, failed or removed for allocationID on resource manager rm, including one
// published before Await was called. A failed reply comes back with a *FailedError (errors.Is matches its
// Reason; Retryable says whether publishing again may help). When ctx ends first, the error is ctx.Err().
//
// Where it reads from: for an allocation this Client published an event for, the ITG_REPLIES sequence
// taken just before that publish (so only replies published since are read); otherwise AwaitFrom, or the
// client's lookback (WithAwaitLookback, 24 h by default). It never reads other resource managers' replies.
func (c *Client) Await(ctx context.Context, rm, allocationID string, opts ...AwaitOption) (Reply, error) {
	var o awaitOpts
	for _, f := range opts {
		f(&o)
	}
	key := markKey{rm, allocationID}
	from := FromTime(time.Now().Add(-c.o.lookback))
	c.mu.Lock()
	if m, ok := c.marks[key]; ok {
		from = m
	}
	c.mu.Unlock()
	if o.from != nil {
		from = *o.from
	}
	var got Reply
	found := false
	err := c.read(ctx, rm, from, func(r Reply, err error) bool {
		// A message that is not a reply of the contract cannot be this allocation's answer.
		if err != nil || r.AllocationID() != allocationID {
			return true
		}
		if o.eventID != "" && r.SourceEventID() != o.eventID {
			return true
		}
		got, found = r, true
		return false
	})
	if !found {
		return Reply{}, err
	}
	if got.Kind == KindRemoved {
		c.Forget(rm, allocationID)
	}
	return got, got.Err()
}

// Watch streams every reply of resource manager rm from `from`, in stream order, until ctx ends or the loop
// stops; a master rebuilding its state after a restart watches from the last Sequence it stored. A message
// that is not a reply of the contract is yielded as a *DecodeError and the watch goes on; any other error
// (ctx.Err() when ctx ends) is yielded last.
//
//	for r, err := range client.Watch(ctx, "k8s-west", itg.FromSequence(last+1)) { ... }
func (c *Client) Watch(ctx context.Context, rm string, from From) iter.Seq2[Reply, error] {
	return func(yield func(Reply, error) bool) {
		stopped := false
		err := c.read(ctx, rm, from, func(r Reply, err error) bool {
			if !yield(r, err) {
				stopped = true
				return false
			}
			return true
		})
		if err != nil && !stopped {
			yield(Reply{}, err)
		}
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
