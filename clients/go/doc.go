// Package itg is the cluster master's side of the Internal Task Gateway's wire contract
// (docs/contract.md): it publishes started and ended events to JetStream and reads the workers' ready,
// failed and removed replies.
//
// The layers, bottom up:
//
//   - contract.go: subjects, stream names and the five payloads as Go types, with the contract's rules
//     (Started.Validate); a test checks what they marshal against the JSON Schemas in schemas/.
//   - errors.go: what a caller branches on. A failed reply is a *FailedError whose Reason matches with
//     errors.Is (itg.ReasonCapacityExhausted, ...) and whose Retryable says whether publishing again can
//     help; an event refused before publishing matches ReasonInvalidEvent; a publish never acknowledged is
//     a *PublishError.
//   - client.go: Client.Started and Client.Ended publish with Nats-Msg-Id set to the event id and try an
//     unacknowledged publish again (the stream drops the copy), remembering for each allocation where in
//     ITG_REPLIES its answer can start.
//   - replies.go: Client.Await returns an allocation's answer, even one that came before the call;
//     Client.Watch streams every reply of a resource manager from a sequence or a time.
//
// # How Await finds one allocation's reply
//
// Replies of every allocation of a resource manager share one subject per kind
// (itg.replies.<rm>.ready, .failed, .removed) and name the allocation only in the payload, so the server
// cannot filter by allocation and "last message per subject" means the last of any allocation. Await
// therefore reads an ordered consumer filtered to the resource manager's three reply subjects, starting
// where the answer can start: the ITG_REPLIES sequence taken just before this client published the
// allocation's last event. It reads only the replies published since, and stops at the first that names
// the allocation. For an allocation another process published (a master after a restart), pass AwaitFrom
// with a time or a sequence that process stored, or rely on the client's lookback (24 h by default).
//
// A master that rebuilds its state after a restart uses Watch from the last sequence it stored.
package itg
