package itg_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	itg "internal-task-gateway.io/clients/go"
)

func newClient(t *testing.T, opts ...itg.Option) *itg.Client {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("NATS at %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)
	c, err := itg.New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func started(alloc string, ports ...itg.ProxyPort) itg.Started {
	return itg.Started{
		AllocationID: alloc,
		TaskID:       strings.Split(alloc, ".")[0],
		Namespace:    taskNS,
		PodSelector:  map[string]string{"determined.ai/allocation_id": alloc},
		ProxyPorts:   ports,
	}
}

func newAlloc() string { return itg.NewEventID() + ".1" }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func gatewayPorts(r itg.Reply) []int {
	var out []int
	if r.Ready != nil {
		for _, p := range r.Ready.Proxies {
			out = append(out, p.GatewayPort)
		}
	}
	if r.Removed != nil {
		for _, p := range r.Removed.Released {
			out = append(out, p.GatewayPort)
		}
	}
	slices.Sort(out)
	return out
}

func TestPublishAwaitReadyThenEndedAwaitRemoved(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t, 90*time.Second)
	alloc := newAlloc()
	t0 := time.Now()
	pub, err := c.Started(ctx, rm, started(alloc, itg.ProxyPort{Name: "jupyter", Port: 8888}, itg.ProxyPort{Name: "tensorboard", Port: 6006}))
	if err != nil {
		t.Fatal(err)
	}
	if pub.Duplicate || pub.Attempts != 1 || pub.Sequence == 0 {
		t.Fatalf("a first publish is stored once, at the first attempt: %+v", pub)
	}
	ready, err := c.Await(ctx, rm, alloc)
	if err != nil {
		t.Fatalf("await ready: %v", err)
	}
	t.Logf("started %s (ITG_EVENTS seq %d); ready after %v (ITG_REPLIES seq %d): %+v",
		alloc, pub.Sequence, time.Since(t0).Round(time.Millisecond), ready.Sequence, ready.Ready.Proxies)
	if ready.Kind != itg.KindReady || ready.Ready.SourceEventID != pub.EventID || ready.ResourceManager != rm {
		t.Fatalf("the ready answers this started: %+v", ready)
	}
	if len(ready.Ready.Proxies) != 2 {
		t.Fatalf("one proxy per port: %+v", ready.Ready.Proxies)
	}
	for _, p := range ready.Ready.Proxies {
		if p.GatewayPort < 47000 || p.GatewayPort > 47063 || p.Address != fmt.Sprintf("203.0.113.10:%d", p.GatewayPort) {
			t.Fatalf("a port of the range, at the Gateway's address: %+v", p)
		}
	}

	t1 := time.Now()
	end, err := c.Ended(ctx, rm, itg.Ended{AllocationID: alloc})
	if err != nil {
		t.Fatal(err)
	}
	removed, err := c.Await(ctx, rm, alloc)
	if err != nil {
		t.Fatalf("await removed: %v", err)
	}
	t.Logf("ended; removed after %v (ITG_REPLIES seq %d): released %+v",
		time.Since(t1).Round(time.Millisecond), removed.Sequence, removed.Removed.Released)
	if removed.Kind != itg.KindRemoved || removed.Removed.SourceEventID != end.EventID {
		t.Fatalf("the removed answers this ended: %+v", removed)
	}
	if got, want := gatewayPorts(removed), gatewayPorts(ready); !slices.Equal(got, want) {
		t.Fatalf("released %v, exposed %v", got, want)
	}
}

func TestDuplicateStartedIsStoredOnceAndAnsweredWithTheSameAddresses(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t, 90*time.Second)
	alloc := newAlloc()
	ev := started(alloc, itg.ProxyPort{Name: "shell", Port: 2222})
	ev.EventID = itg.NewEventID()
	first, err := c.Started(ctx, rm, ev)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Started(ctx, rm, ev)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first publish %+v; the same event again %+v", first, again)
	if first.Duplicate || !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("the stream drops the copy with the same Nats-Msg-Id: %+v then %+v", first, again)
	}
	ready, err := c.Await(ctx, rm, alloc, itg.ForEvent(ev.EventID))
	if err != nil {
		t.Fatal(err)
	}
	// A second started with a new event id, as a master that lost track would send: same addresses.
	other, err := c.Started(ctx, rm, started(alloc, itg.ProxyPort{Name: "shell", Port: 2222}))
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Await(ctx, rm, alloc, itg.ForEvent(other.EventID))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first ready %+v; ready for the second started %+v", ready.Ready.Proxies, second.Ready.Proxies)
	if !slices.Equal(gatewayPorts(ready), gatewayPorts(second)) || ready.Ready.Proxies[0].Address != second.Ready.Proxies[0].Address {
		t.Fatalf("an allocation is never exposed twice: %+v vs %+v", ready.Ready.Proxies, second.Ready.Proxies)
	}
	endAndAwait(t, c, alloc)
}

func endAndAwait(t *testing.T, c *itg.Client, alloc string) {
	t.Helper()
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.Ended(ctx, rm, itg.Ended{AllocationID: alloc}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, rm, alloc)
	if err != nil || r.Kind != itg.KindRemoved {
		t.Fatalf("removed after ended: %+v, %v", r, err)
	}
}

// waitStored watches the stream (not Await) until the allocation's answer is stored.
func waitStored(t *testing.T, c *itg.Client, from itg.From, alloc string) itg.Reply {
	t.Helper()
	ctx := ctxFor(t, 60*time.Second)
	for r, err := range c.Watch(ctx, rm, from) {
		if err != nil {
			t.Fatalf("watching for %s: %v", alloc, err)
		}
		if r.AllocationID() == alloc {
			return r
		}
	}
	t.Fatalf("the watch ended without a reply for %s", alloc)
	return itg.Reply{}
}

func TestAwaitReturnsAReplyThatCameBeforeTheCall(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t, 90*time.Second)
	alloc := newAlloc()
	before := time.Now()
	pub, err := c.Started(ctx, rm, started(alloc, itg.ProxyPort{Name: "jupyter", Port: 8888}))
	if err != nil {
		t.Fatal(err)
	}
	stored := waitStored(t, newClient(t), itg.FromTime(before.Add(-time.Second)), alloc)
	t.Logf("the ready was stored at ITG_REPLIES seq %d before Await was called", stored.Sequence)

	// The publishing client starts at the mark it took before publishing.
	t0 := time.Now()
	got, err := c.Await(ctx, rm, alloc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Await on the publishing client: seq %d in %v", got.Sequence, time.Since(t0).Round(time.Microsecond))
	// A client that published nothing (a master after a restart): from a time it stored, and by lookback.
	fresh := newClient(t)
	t0 = time.Now()
	byTime, err := fresh.Await(ctx, rm, alloc, itg.AwaitFrom(itg.FromTime(before.Add(-time.Second))))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Await on a fresh client from a stored time: seq %d in %v", byTime.Sequence, time.Since(t0).Round(time.Microsecond))
	t0 = time.Now()
	byLookback, err := fresh.Await(ctx, rm, alloc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Await on a fresh client by lookback: seq %d in %v", byLookback.Sequence, time.Since(t0).Round(time.Microsecond))
	for _, r := range []itg.Reply{got, byTime, byLookback} {
		if r.Sequence != stored.Sequence || r.Kind != itg.KindReady || r.Ready.SourceEventID != pub.EventID {
			t.Fatalf("every Await returns the stored ready (seq %d): %+v", stored.Sequence, r)
		}
	}
	endAndAwait(t, c, alloc)
}

func TestAwaitEndsWithTheContext(t *testing.T) {
	c := newClient(t)
	alloc := newAlloc() // no event is ever published for it

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Await(ctx, rm, alloc)
	t.Logf("Await with a 300 ms deadline returned after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a deadline ends Await with context.DeadlineExceeded: %v", err)
	}

	cancelled, cancelNow := context.WithCancel(context.Background())
	go func() { time.Sleep(200 * time.Millisecond); cancelNow() }()
	_, err = c.Await(cancelled, rm, alloc)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancel ends Await with context.Canceled: %v", err)
	}

	_, err = c.Started(cancelled, rm, started(newAlloc(), itg.ProxyPort{Name: "jupyter", Port: 8888}))
	t.Logf("Started with a cancelled context: %v", err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled publish says so: %v", err)
	}
}

func TestAFailedReplyIsAnErrorACallerCanBranchOn(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t, 60*time.Second)
	alloc := newAlloc()
	ev := started(alloc, itg.ProxyPort{Name: "jupyter", Port: 8888})
	ev.Namespace = "kube-system" // refused by the worker's default allowed namespaces
	if _, err := c.Started(ctx, rm, ev); err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, rm, alloc)
	t.Logf("Await: %v", err)
	var failed *itg.FailedError
	if !errors.As(err, &failed) || r.Kind != itg.KindFailed {
		t.Fatalf("a failed reply is a *FailedError: %+v, %v", r, err)
	}
	if !errors.Is(err, itg.ReasonNamespaceNotAllowed) || errors.Is(err, itg.ReasonCapacityExhausted) {
		t.Fatalf("errors.Is matches the reason, and only it: %v", err)
	}
	if failed.Retryable() || itg.IsRetryable(err) {
		t.Fatalf("a refused namespace is not retryable: %+v", failed.Failed)
	}

	// Refused before publishing: the same branch as the worker's invalid_event.
	bad := started(newAlloc(), itg.ProxyPort{Name: "jupyter", Port: 0})
	_, err = c.Started(ctx, rm, bad)
	if !errors.Is(err, itg.ReasonInvalidEvent) || itg.IsRetryable(err) {
		t.Fatalf("a bad event is refused as invalid_event: %v", err)
	}
}

func TestWatchStreamsEveryReplyFromASequenceOrATime(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t, 90*time.Second)
	before := time.Now().Add(-time.Second)
	alloc := newAlloc()
	if _, err := c.Started(ctx, rm, started(alloc, itg.ProxyPort{Name: "jupyter", Port: 8888})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, rm, alloc); err != nil {
		t.Fatal(err)
	}
	endAndAwait(t, c, alloc)

	// From a time: this allocation's ready then removed, in stream order, among the other tests' replies.
	var mine []itg.Reply
	var last uint64
	wctx, stop := context.WithCancel(ctx)
	for r, err := range c.Watch(wctx, rm, itg.FromTime(before)) {
		if err != nil {
			t.Fatal(err)
		}
		if r.Sequence <= last || r.ResourceManager != rm {
			t.Fatalf("stream order, this resource manager only: %d after %d, %s", r.Sequence, last, r.ResourceManager)
		}
		last = r.Sequence
		if r.AllocationID() == alloc {
			mine = append(mine, r)
			if r.Kind == itg.KindRemoved {
				break
			}
		}
	}
	stop()
	if len(mine) != 2 || mine[0].Kind != itg.KindReady || mine[1].Kind != itg.KindRemoved {
		t.Fatalf("ready then removed: %+v", mine)
	}
	t.Logf("watch from a time: ready at seq %d, removed at seq %d", mine[0].Sequence, mine[1].Sequence)

	// From a sequence: resuming after the ready starts after it.
	for r, err := range c.Watch(ctx, rm, itg.FromSequence(mine[0].Sequence+1)) {
		if err != nil {
			t.Fatal(err)
		}
		if r.Sequence <= mine[0].Sequence || r.Sequence > mine[1].Sequence {
			t.Fatalf("resumed at seq %d, wanted (%d, %d]", r.Sequence, mine[0].Sequence, mine[1].Sequence)
		}
		if r.Sequence == mine[1].Sequence {
			break
		}
	}
}
