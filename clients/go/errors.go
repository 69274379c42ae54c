package itg

import (
	"errors"
	"fmt"
)

// Reason is why a worker answered failed. It is an error, so a caller can branch with errors.Is:
//
//	if errors.Is(err, itg.ReasonCapacityExhausted) { ... }
type Reason string

// The reasons of the contract.
const (
	// ReasonInvalidEvent: the payload breaks the contract. Publishing it again does not help.
	ReasonInvalidEvent Reason = "invalid_event"
	// ReasonUnknownResourceManager: no resource manager of that name is configured.
	ReasonUnknownResourceManager Reason = "unknown_resource_manager"
	// ReasonNamespaceNotAllowed: the task's namespace is not one the worker may write to.
	ReasonNamespaceNotAllowed Reason = "namespace_not_allowed"
	// ReasonCapacityExhausted: no free Gateway port or listener slot before the capacity deadline.
	ReasonCapacityExhausted Reason = "capacity_exhausted"
	// ReasonKubernetesError: the apiserver refused, or kept failing until the deadline.
	ReasonKubernetesError Reason = "kubernetes_error"
	// ReasonTimeout: the work did not finish in time.
	ReasonTimeout Reason = "timeout"
)

func (r Reason) Error() string { return "itg: failed: " + string(r) }

// Known reports whether r is one of the reasons of the contract; a newer worker may send others.
func (r Reason) Known() bool {
	switch r {
	case ReasonInvalidEvent, ReasonUnknownResourceManager, ReasonNamespaceNotAllowed,
		ReasonCapacityExhausted, ReasonKubernetesError, ReasonTimeout:
		return true
	}
	return false
}

// FailedError is a failed reply as a Go error: errors.As gives the reply, errors.Is matches its Reason.
type FailedError struct {
	Failed Failed
	// Sequence is the reply's sequence in ITG_REPLIES.
	Sequence uint64
}

func (e *FailedError) Error() string {
	alloc := "<unreadable>"
	if e.Failed.AllocationID != nil {
		alloc = *e.Failed.AllocationID
	}
	retry := "not retryable"
	if e.Failed.Retryable {
		retry = "retryable"
	}
	return fmt.Sprintf("itg: allocation %s on %s failed (%s, %s): %s",
		alloc, e.Failed.ResourceManager, e.Failed.Reason, retry, e.Failed.Message)
}

// Unwrap lets errors.Is match the reason.
func (e *FailedError) Unwrap() error { return e.Failed.Reason }

// Retryable says whether publishing the event again later may succeed, as the worker judged it.
func (e *FailedError) Retryable() bool { return e.Failed.Retryable }

// InvalidEventError is an event refused before it was published. It matches ReasonInvalidEvent, the
// answer the worker would have given.
type InvalidEventError struct {
	Field   string
	Problem string
}

func (e *InvalidEventError) Error() string {
	return fmt.Sprintf("itg: invalid event: field %s: %s", e.Field, e.Problem)
}

// Unwrap lets errors.Is(err, ReasonInvalidEvent) match.
func (e *InvalidEventError) Unwrap() error { return ReasonInvalidEvent }

// PublishError is a publish that no attempt got acknowledged by ITG_EVENTS. Publishing the same event
// again is safe: the stream drops a copy with the same Nats-Msg-Id within its duplicate window.
type PublishError struct {
	Subject  string
	EventID  string
	Attempts int
	Err      error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("itg: publishing %s (event %s) was not acknowledged after %d attempt(s): %v; check that the "+
		"NATS server is reachable and that a worker has created stream %s", e.Subject, e.EventID, e.Attempts, e.Err, EventsStream)
}

func (e *PublishError) Unwrap() error { return e.Err }

// ErrNoRepliesStream means ITG_REPLIES does not exist yet: no worker has started against this NATS.
var ErrNoRepliesStream = errors.New("itg: stream " + RepliesStream + " does not exist: start a worker, which creates it")

// IsRetryable reports whether err is worth retrying later: a failed reply the worker marked retryable, or
// a publish that was not acknowledged. It is false for refused events and for nil.
func IsRetryable(err error) bool {
	var f *FailedError
	if errors.As(err, &f) {
		return f.Retryable()
	}
	var p *PublishError
	return errors.As(err, &p)
}
