package itg_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	itg "internal-task-gateway.io/clients/go"
)

var schemaDir = filepath.Join(repoRoot, "schemas")

// schema compiles schemas/<name>.schema.json (draft 2020-12) with formats asserted.
func schema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	s, err := c.Compile(filepath.Join(schemaDir, name+".schema.json"))
	if err != nil {
		t.Fatalf("compiling the %s schema: %v", name, err)
	}
	return s
}

func validate(t *testing.T, s *jsonschema.Schema, data []byte) error {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not JSON: %v: %s", err, data)
	}
	return s.Validate(doc)
}

func ptr[T any](v T) *T { return &v }

// What the types marshal, built as a master and a worker would fill them, conforms to the schemas.
func TestWhatTheTypesMarshalConformsToTheSchemas(t *testing.T) {
	at := time.Date(2026, 3, 14, 9, 26, 53, 589_000_000, time.UTC)
	alloc := "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e.1"
	cases := map[string][]any{
		"started": {
			itg.Started{SchemaVersion: 1, EventID: itg.NewEventID(), AllocationID: alloc, TaskID: "t",
				Namespace: "team-a", PodSelector: map[string]string{"app": "nb"},
				ProxyPorts: []itg.ProxyPort{{Name: "jupyter", Port: 8888}}, OccurredAt: &at},
			// Optional fields left out.
			itg.Started{SchemaVersion: 1, EventID: itg.NewEventID(), AllocationID: alloc, Namespace: "team-a",
				PodSelector: map[string]string{"app": "nb"}, ProxyPorts: []itg.ProxyPort{{Name: "ssh", Port: 22}}},
		},
		"ended": {
			itg.Ended{SchemaVersion: 1, EventID: itg.NewEventID(), AllocationID: alloc, OccurredAt: &at},
			itg.Ended{SchemaVersion: 1, EventID: itg.NewEventID(), AllocationID: alloc},
		},
		"ready": {itg.Ready{SchemaVersion: 1, ResourceManager: "k8s-west", AllocationID: alloc,
			SourceEventID: itg.NewEventID(), Gateway: itg.GatewayRef{Namespace: "gateway-system", Name: "itg"},
			Proxies: []itg.Proxy{{Name: "jupyter", ContainerPort: 8888, GatewayPort: 40000, Address: "203.0.113.10:40000"}}}},
		"failed": {
			itg.Failed{SchemaVersion: 1, ResourceManager: "k8s-west", AllocationID: ptr(alloc),
				SourceEventID: ptr(itg.NewEventID()), Reason: itg.ReasonCapacityExhausted, Message: "No port.", Retryable: true},
			// An event that could not be read: both ids null.
			itg.Failed{SchemaVersion: 1, ResourceManager: "k8s-west", Reason: itg.ReasonInvalidEvent, Message: "Not JSON."},
		},
		"removed": {
			itg.Removed{SchemaVersion: 1, ResourceManager: "k8s-west", AllocationID: alloc, SourceEventID: itg.NewEventID(),
				Released: []itg.Released{{Name: "jupyter", GatewayPort: 40000}}},
			// Nothing had been exposed: an empty list, not null.
			itg.Removed{SchemaVersion: 1, ResourceManager: "k8s-west", AllocationID: alloc, SourceEventID: itg.NewEventID()},
		},
	}
	for name, values := range cases {
		s := schema(t, name)
		for i, v := range values {
			data, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(t, s, data); err != nil {
				t.Errorf("%s #%d does not conform: %s\n%v", name, i, data, err)
			}
		}
	}
	// The check bites: a reason outside the enum is refused.
	data, _ := json.Marshal(itg.Failed{SchemaVersion: 1, ResourceManager: "k8s-west", Reason: "overloaded", Message: "x"})
	if validate(t, schema(t, "failed"), data) == nil {
		t.Fatal("the failed schema accepts an unknown reason")
	}
}

// Every example in schemas/examples decodes into its type with no unknown field, and marshals back to the
// same JSON, which the schema accepts.
func TestEveryExampleDecodesAndRoundTrips(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(schemaDir, "examples", "*.json"))
	if len(files) != 5 {
		t.Fatalf("five payload examples, found %v", files)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch name {
		case "started":
			v = &itg.Started{}
		case "ended":
			v = &itg.Ended{}
		case "ready", "failed", "removed":
			r, err := itg.DecodeReply("itg.replies.k8s-west."+name, data)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			v = map[string]any{"ready": r.Ready, "failed": r.Failed, "removed": r.Removed}[name]
		default:
			t.Fatalf("an example with no type: %s", f)
		}
		if name == "started" || name == "ended" {
			dec := json.NewDecoder(bytes.NewReader(data))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if ev, ok := v.(interface{ Validate() error }); ok {
			if err := ev.Validate(); err != nil {
				t.Errorf("%s: the example breaks a rule of Validate: %v", name, err)
			}
		}
		back, _ := json.Marshal(v)
		var want, got any
		_ = json.Unmarshal(data, &want)
		_ = json.Unmarshal(back, &got)
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s does not round-trip:\n  example %s\n  back    %s", name, data, back)
		}
		if err := validate(t, schema(t, name), back); err != nil {
			t.Errorf("%s marshalled back does not conform: %v", name, err)
		}
		t.Logf("%s: decoded, round-tripped and valid", name)
	}
}

// The invalid payload examples are refused by the schema, and the ones about an event by Validate too, as
// the same invalid_event a worker would answer.
func TestTheInvalidExamplesAreRefused(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(schemaDir, "examples", "invalid", "*.json"))
	if len(files) == 0 {
		t.Fatal("no invalid examples")
	}
	for _, f := range files {
		base := filepath.Base(f)
		kind, _, _ := strings.Cut(base, ".")
		data, _ := os.ReadFile(f)
		if validate(t, schema(t, kind), data) == nil {
			t.Errorf("%s: the schema accepts it", base)
		}
		switch kind {
		case "started":
			var ev itg.Started
			_ = json.Unmarshal(data, &ev) // a wrong-typed field leaves its zero value, which Validate refuses
			err := ev.Validate()
			if !errors.Is(err, itg.ReasonInvalidEvent) {
				t.Errorf("%s: Validate accepts it", base)
			}
			t.Logf("%s: %v", base, err)
		case "failed":
			var f itg.Failed
			_ = json.Unmarshal(data, &f)
			if f.Reason.Known() {
				t.Errorf("%s: reason %q taken for a known one", base, f.Reason)
			}
		}
	}
}
