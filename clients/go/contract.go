package itg

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// SchemaVersion is the only payload version the worker reads and writes.
const SchemaVersion = 1

// The streams the worker creates; the master publishes into the first and reads the second.
const (
	EventsStream  = "ITG_EVENTS"
	RepliesStream = "ITG_REPLIES"
)

// EventKind names an event the master publishes: the last token of its subject.
type EventKind string

// The two events.
const (
	KindStarted EventKind = "started"
	KindEnded   EventKind = "ended"
)

// ReplyKind names a reply a worker publishes: the last token of its subject.
type ReplyKind string

// The three replies.
const (
	KindReady   ReplyKind = "ready"
	KindFailed  ReplyKind = "failed"
	KindRemoved ReplyKind = "removed"
)

// EventSubject is itg.events.<rm>.<kind>, where the master publishes.
func EventSubject(rm string, kind EventKind) string { return "itg.events." + rm + "." + string(kind) }

// ReplySubject is itg.replies.<rm>.<kind>, where the workers answer.
func ReplySubject(rm string, kind ReplyKind) string { return "itg.replies." + rm + "." + string(kind) }

// ProxyPort is one port a task asks to expose.
type ProxyPort struct {
	// Name is an IANA service name (at most 15 characters), unique within the event.
	Name string `json:"name"`
	// Port is the container port the task listens on, 1 to 65535.
	Port int `json:"port"`
}

// Started is the event a master publishes when a task starts: expose its proxy ports.
type Started struct {
	SchemaVersion int `json:"schema_version"`
	// EventID is a UUID unique per published event; Client.Started fills it in when empty.
	EventID string `json:"event_id"`
	// AllocationID is opaque: 1 to 255 printable ASCII characters, no whitespace.
	AllocationID string `json:"allocation_id"`
	TaskID       string `json:"task_id,omitempty"`
	// Namespace is the DNS-1123 label of the namespace the task's pods run in.
	Namespace string `json:"namespace"`
	// PodSelector holds 1 to 16 label pairs that select the task's pods.
	PodSelector map[string]string `json:"pod_selector"`
	// ProxyPorts holds 1 to 16 ports, names and ports unique.
	ProxyPorts []ProxyPort `json:"proxy_ports"`
	OccurredAt *time.Time  `json:"occurred_at,omitempty"`
}

// Ended is the event a master publishes when a task ends: remove everything made for it.
type Ended struct {
	SchemaVersion int        `json:"schema_version"`
	EventID       string     `json:"event_id"`
	AllocationID  string     `json:"allocation_id"`
	OccurredAt    *time.Time `json:"occurred_at,omitempty"`
}

// GatewayRef names the Gateway whose listeners carry the addresses of a Ready.
type GatewayRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Proxy is one exposed proxy port: Address is gateway_ip:gateway_port ([v6]:port for IPv6).
type Proxy struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"container_port"`
	GatewayPort   int    `json:"gateway_port"`
	Address       string `json:"address"`
}

// Ready says an allocation's ports are exposed; every Ready for an allocation carries the same addresses.
type Ready struct {
	SchemaVersion   int        `json:"schema_version"`
	ResourceManager string     `json:"resource_manager"`
	AllocationID    string     `json:"allocation_id"`
	SourceEventID   string     `json:"source_event_id"`
	Gateway         GatewayRef `json:"gateway"`
	Proxies         []Proxy    `json:"proxies"`
}

// Failed says an event could not be served. AllocationID and SourceEventID are nil when the event could not
// be read far enough to find them.
type Failed struct {
	SchemaVersion   int     `json:"schema_version"`
	ResourceManager string  `json:"resource_manager"`
	AllocationID    *string `json:"allocation_id"`
	SourceEventID   *string `json:"source_event_id"`
	Reason          Reason  `json:"reason"`
	Message         string  `json:"message"`
	Retryable       bool    `json:"retryable"`
}

// Released is a gateway port freed for one proxy port.
type Released struct {
	Name        string `json:"name"`
	GatewayPort int    `json:"gateway_port"`
}

// Removed says everything made for an allocation is gone; Released is empty when nothing had been exposed.
type Removed struct {
	SchemaVersion   int        `json:"schema_version"`
	ResourceManager string     `json:"resource_manager"`
	AllocationID    string     `json:"allocation_id"`
	SourceEventID   string     `json:"source_event_id"`
	Released        []Released `json:"released"`
}

// MarshalJSON writes an empty list, never null: the schema wants an array.
func (r Removed) MarshalJSON() ([]byte, error) {
	type plain Removed
	if r.Released == nil {
		r.Released = []Released{}
	}
	return json.Marshal(plain(r))
}

var (
	rmPattern    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	uuidPattern  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	allocPattern = regexp.MustCompile(`^[!-~]{1,255}$`)
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	ianaName     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$`)
	hasLetter    = regexp.MustCompile(`[a-z]`)
)

// NewEventID returns a random (version 4) UUID in the hyphenated form the schemas require.
func NewEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ValidateResourceManager checks that rm can be a subject token: 1 to 64 of A-Z a-z 0-9 _ -.
func ValidateResourceManager(rm string) error {
	if !rmPattern.MatchString(rm) {
		return &InvalidEventError{Field: "resource_manager", Problem: fmt.Sprintf("%q must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'", rm)}
	}
	return nil
}

// Validate checks the rules of the contract that the worker would otherwise refuse with invalid_event, so a
// master learns of a bad event before it is published. The worker stays the authority: pod selector keys
// and values are checked there.
func (s *Started) Validate() error {
	bad := func(field, problem string) error { return &InvalidEventError{Field: field, Problem: problem} }
	if err := validateIDs(s.SchemaVersion, s.EventID, s.AllocationID); err != nil {
		return err
	}
	if !dnsLabel.MatchString(s.Namespace) {
		return bad("namespace", fmt.Sprintf("%q is not a DNS-1123 label", s.Namespace))
	}
	if n := len(s.PodSelector); n < 1 || n > 16 {
		return bad("pod_selector", fmt.Sprintf("has %d label pairs; 1 to 16 are allowed", n))
	}
	if n := len(s.ProxyPorts); n < 1 || n > 16 {
		return bad("proxy_ports", fmt.Sprintf("has %d ports; 1 to 16 are allowed", n))
	}
	names, ports := map[string]bool{}, map[int]bool{}
	for i, p := range s.ProxyPorts {
		field := fmt.Sprintf("proxy_ports[%d]", i)
		if !ianaName.MatchString(p.Name) || !hasLetter.MatchString(p.Name) || strings.Contains(p.Name, "--") {
			return bad(field+".name", fmt.Sprintf("%q is not an IANA service name (1 to 15 of a-z, 0-9, '-', a letter, no '--')", p.Name))
		}
		if p.Port < 1 || p.Port > 65535 {
			return bad(field+".port", fmt.Sprintf("%d is outside 1..65535", p.Port))
		}
		if names[p.Name] {
			return bad(field+".name", fmt.Sprintf("%q is used twice", p.Name))
		}
		if ports[p.Port] {
			return bad(field+".port", fmt.Sprintf("%d is used twice", p.Port))
		}
		names[p.Name], ports[p.Port] = true, true
	}
	return nil
}

// Validate checks the ids and the schema version.
func (e *Ended) Validate() error { return validateIDs(e.SchemaVersion, e.EventID, e.AllocationID) }

func validateIDs(version int, eventID, allocationID string) error {
	if version != SchemaVersion {
		return &InvalidEventError{Field: "schema_version", Problem: fmt.Sprintf("is %d; only %d is read", version, SchemaVersion)}
	}
	if !uuidPattern.MatchString(eventID) {
		return &InvalidEventError{Field: "event_id", Problem: fmt.Sprintf("%q is not a hyphenated UUID", eventID)}
	}
	if !allocPattern.MatchString(allocationID) {
		return &InvalidEventError{Field: "allocation_id", Problem: fmt.Sprintf("%q must be 1 to 255 printable ASCII characters without whitespace", allocationID)}
	}
	return nil
}
