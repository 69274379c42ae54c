package itg

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Client publishes a master's events and reads the workers' replies over one NATS connection. It is safe
// for concurrent use.
type Client struct {
	js jetstream.JetStream
	o  options

	mu sync.Mutex
	// marks: per allocation, where in ITG_REPLIES the answer to the last event this client published for it
	// can start. Await reads from there, so it finds an answer that came before the call and reads only
	// the replies published since the event.
	marks map[markKey]From
}

type markKey struct{ rm, alloc string }

type options struct {
	attempts       int
	publishTimeout time.Duration
	retryMin       time.Duration
	retryMax       time.Duration
	lookback       time.Duration
}

// Option tunes a Client.
type Option func(*options)

// WithPublishAttempts sets how many times a publish that was not acknowledged is tried (default 5). Each
// retry carries the same Nats-Msg-Id, so the stream stores the event once.
func WithPublishAttempts(n int) Option { return func(o *options) { o.attempts = max(n, 1) } }

// WithPublishTimeout sets how long one attempt waits for the stream's acknowledgement (default 2 s).
func WithPublishTimeout(d time.Duration) Option { return func(o *options) { o.publishTimeout = d } }

// WithRetryWait sets the pause between attempts: from min, doubling up to max (default 100 ms to 2 s).
func WithRetryWait(min, max time.Duration) Option {
	return func(o *options) { o.retryMin, o.retryMax = min, max }
}

// WithAwaitLookback sets how far back Await reads for an allocation this client has not published an
// event for, such as after the master restarted (default 24 h). AwaitFrom overrides it per call.
func WithAwaitLookback(d time.Duration) Option { return func(o *options) { o.lookback = d } }

// New makes a Client on an open NATS connection. The connection stays the caller's to close.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	o := options{attempts: 5, publishTimeout: 2 * time.Second, retryMin: 100 * time.Millisecond,
		retryMax: 2 * time.Second, lookback: 24 * time.Hour}
	for _, f := range opts {
		f(&o)
	}
	return &Client{js: js, o: o, marks: map[markKey]From{}}, nil
}

// Published is what ITG_EVENTS acknowledged.
type Published struct {
	EventID string
	// Sequence is the event's sequence in ITG_EVENTS (the first copy's, for a duplicate).
	Sequence uint64
	// Duplicate is true when the stream already held an event with this id: nothing new was stored.
	Duplicate bool
	// Attempts is how many publishes it took.
	Attempts int
}

// Started publishes a started event for resource manager rm, with Nats-Msg-Id set to its event id. An
// empty EventID is filled with a new UUID and a zero SchemaVersion with SchemaVersion. The event is
// validated first; a refusal is an *InvalidEventError that matches ReasonInvalidEvent.
//
// Publish the same Started again (same EventID) to retry safely after an error.
func (c *Client) Started(ctx context.Context, rm string, ev Started) (Published, error) {
	if err := prepare(rm, &ev.SchemaVersion, &ev.EventID, ev.Validate); err != nil {
		return Published{}, err
	}
	return c.publishEvent(ctx, rm, KindStarted, ev.EventID, ev.AllocationID, ev)
}

// Ended publishes an ended event for resource manager rm, as Started does. Await afterwards returns the
// removed reply.
func (c *Client) Ended(ctx context.Context, rm string, ev Ended) (Published, error) {
	if err := prepare(rm, &ev.SchemaVersion, &ev.EventID, ev.Validate); err != nil {
		return Published{}, err
	}
	return c.publishEvent(ctx, rm, KindEnded, ev.EventID, ev.AllocationID, ev)
}

// prepare fills an event's zero schema version and empty event id, then checks rm and the event (validate
// sees the filled-in values): what Started and Ended do before they publish.
func prepare(rm string, schemaVersion *int, eventID *string, validate func() error) error {
	if *schemaVersion == 0 {
		*schemaVersion = SchemaVersion
	}
	if *eventID == "" {
		*eventID = NewEventID()
	}
	if err := ValidateResourceManager(rm); err != nil {
		return err
	}
	return validate()
}

func (c *Client) publishEvent(ctx context.Context, rm string, kind EventKind, eventID, alloc string, body any) (Published, error) {
	data, err := jsonMarshal(body)
	if err != nil {
		return Published{}, err
	}
	// The mark is taken before the publish, so any reply to this event comes after it.
	mark := c.repliesMark(ctx)
	msg := nats.NewMsg(EventSubject(rm, kind))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, eventID)
	ack, attempts, err := retryPublish(ctx, c.o, func(actx context.Context) (*jetstream.PubAck, error) {
		return c.js.PublishMsg(actx, msg, jetstream.WithExpectStream(EventsStream))
	})
	if err != nil {
		return Published{}, &PublishError{Subject: msg.Subject, EventID: eventID, Attempts: attempts, Err: err}
	}
	c.mu.Lock()
	c.marks[markKey{rm, alloc}] = mark
	c.mu.Unlock()
	return Published{EventID: eventID, Sequence: ack.Sequence, Duplicate: ack.Duplicate, Attempts: attempts}, nil
}

// repliesMark is the first ITG_REPLIES sequence that can hold a reply to an event published now. When the
// stream cannot be asked, a time a minute back stands in (server and client clocks may differ a little).
func (c *Client) repliesMark(ctx context.Context) From {
	s, err := c.js.Stream(ctx, RepliesStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return FromSequence(1) // the stream the worker creates will start empty
	}
	if err == nil {
		return FromSequence(s.CachedInfo().State.LastSeq + 1)
	}
	return FromTime(time.Now().Add(-time.Minute))
}

// Forget drops what the client remembers about an allocation (Await forgets it by itself once it returns
// a removed reply).
func (c *Client) Forget(rm, allocationID string) {
	c.mu.Lock()
	delete(c.marks, markKey{rm, allocationID})
	c.mu.Unlock()
}

// retryPublish tries attempt until the stream acknowledges, a server refusal (an API error) says retrying
// cannot help, the attempts run out or ctx ends. Each try gets its own o.publishTimeout.
func retryPublish(ctx context.Context, o options, attempt func(context.Context) (*jetstream.PubAck, error)) (*jetstream.PubAck, int, error) {
	wait := o.retryMin
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, o.publishTimeout)
		ack, err := attempt(actx)
		cancel()
		if err == nil {
			return ack, n, nil
		}
		if ctx.Err() != nil {
			return nil, n, errors.Join(ctx.Err(), err)
		}
		var api *jetstream.APIError
		if errors.As(err, &api) || n >= o.attempts {
			return nil, n, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, n, errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, o.retryMax)
	}
}
