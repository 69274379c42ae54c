package itg

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The retry loop alone, with attempts that fail as a lost acknowledgement does; the end-to-end tests show
// the real stream dropping the copy a retry sends.
func TestAnUnacknowledgedPublishIsTriedAgainUntilAcknowledged(t *testing.T) {
	o := options{attempts: 5, publishTimeout: time.Second, retryMin: time.Millisecond, retryMax: 4 * time.Millisecond}
	calls := 0
	ack, n, err := retryPublish(context.Background(), o, func(context.Context) (*jetstream.PubAck, error) {
		calls++
		if calls < 3 {
			return nil, nats.ErrTimeout
		}
		return &jetstream.PubAck{Stream: EventsStream, Sequence: 7}, nil
	})
	if err != nil || n != 3 || ack.Sequence != 7 {
		t.Fatalf("acknowledged at the third attempt: %v, %d, %v", ack, n, err)
	}
}

func TestARefusalOrTheLastAttemptEndsTheRetries(t *testing.T) {
	o := options{attempts: 3, publishTimeout: time.Second, retryMin: time.Millisecond, retryMax: time.Millisecond}
	refused := &jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}
	_, n, err := retryPublish(context.Background(), o, func(context.Context) (*jetstream.PubAck, error) { return nil, refused })
	if n != 1 || !errors.Is(err, refused) {
		t.Fatalf("a server refusal is not retried: %d, %v", n, err)
	}
	_, n, err = retryPublish(context.Background(), o, func(context.Context) (*jetstream.PubAck, error) { return nil, nats.ErrTimeout })
	if n != 3 || !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("three attempts, then the last error: %d, %v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, n, err = retryPublish(ctx, o, func(context.Context) (*jetstream.PubAck, error) { return nil, nats.ErrTimeout })
	if n != 1 || !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context stops at once: %d, %v", n, err)
	}
}
