package itg_test

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// The end-to-end tests run against the servers of `scripts/testenv up` (read from .itg/env, as the Rust
// tests do) and the real worker binary from `cargo build --bins`, serving a resource manager, a Gateway and
// a task namespace of their own. Nothing is skipped: without the servers or the binary the run fails and
// says what to start.
var (
	repoRoot = mustAbs("../..")
	natsURL  string
	rm       string // this run's resource manager
	taskNS   string // this run's task namespace
)

// workerConfig is the worker's config for these tests, the one place it is written.
func workerConfig(natsURL, kubeconfig, rm, gateway string) string {
	return fmt.Sprintf(`nats:
  url: %s
jetstream:
  ack_wait: 3s
  max_deliver: -1
worker:
  retry_min: 50ms
  retry_max: 500ms
resource_managers:
  - name: %s
    kubeconfig: %s
    # The test Gateway's class has no controller: ready does not wait for one.
    wait_for_controller: false
    internal_task_gateway:
      gateway_name: %s
      gateway_namespace: gateway-system
      gateway_ip: 203.0.113.10
      gateway_port_range_start: 47000
      gateway_port_range_end: 47063
`, natsURL, rm, kubeconfig, gateway)
}

func TestMain(m *testing.M) {
	teardown, err := setUp()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: the client's tests need the local servers and the worker binary: %v\n", err)
		if teardown != nil {
			teardown()
		}
		os.Exit(1)
	}
	code := m.Run()
	teardown()
	os.Exit(code)
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// testEnv reads .itg/env; ITG_TEST_NATS_URL and ITG_TEST_KUBECONFIG override it, as for the Rust tests.
func testEnv() (map[string]string, error) {
	vars := map[string]string{}
	f, err := os.Open(filepath.Join(repoRoot, ".itg/env"))
	if err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				vars[k] = v
			}
		}
		f.Close()
	}
	for _, k := range []string{"NATS_URL", "KUBECONFIG", "KUBECTL"} {
		if v := os.Getenv("ITG_TEST_" + k); v != "" {
			vars[k] = v
		}
		if vars[k] == "" {
			return nil, fmt.Errorf("%s unknown: run `scripts/testenv up` first (it writes %s/.itg/env)", k, repoRoot)
		}
	}
	return vars, nil
}

func kubectl(vars map[string]string, stdin string, args ...string) error {
	cmd := exec.Command(vars["KUBECTL"], append([]string{"--kubeconfig", vars["KUBECONFIG"]}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func setUp() (func(), error) {
	vars, err := testEnv()
	if err != nil {
		return nil, err
	}
	natsURL = vars["NATS_URL"]
	nc, err := nats.Connect(natsURL, nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("NATS at %s is not reachable (%v): run `scripts/testenv up`", natsURL, err)
	}
	nc.Close()
	bin := filepath.Join(repoRoot, "target/debug/itg-worker")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no worker binary at %s: run `cargo build --bins` first", bin)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	s := hex.EncodeToString(b[:])
	rm, taskNS = "go-client-"+s, "go-tasks-"+s
	gateway := "gw-go-" + s
	fixture := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %s, namespace: gateway-system}
spec:
  gatewayClassName: itg
  listeners:
  - {name: placeholder, protocol: TCP, port: 39999}
`, taskNS, gateway)
	if err := kubectl(vars, fixture, "apply", "--server-side", "--field-manager=operator", "-f", "-"); err != nil {
		return nil, fmt.Errorf("the apiserver refused the test's Gateway (is `scripts/testenv up` running?): %w", err)
	}
	cleanCluster := func() {
		_ = kubectl(vars, "", "delete", "--wait=false", "--ignore-not-found", "-n", "gateway-system", "gateway", gateway)
		_ = kubectl(vars, "", "delete", "--wait=false", "--ignore-not-found", "namespace", taskNS)
	}
	logs := filepath.Join(repoRoot, ".itg/logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return cleanCluster, err
	}
	cfgPath := filepath.Join(logs, "go-client-worker.yaml")
	if err := os.WriteFile(cfgPath, []byte(workerConfig(natsURL, vars["KUBECONFIG"], rm, gateway)), 0o600); err != nil {
		return cleanCluster, err
	}
	logPath := filepath.Join(logs, "go-client-worker.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return cleanCluster, err
	}
	worker := exec.Command(bin, "--config", cfgPath)
	worker.Stdout, worker.Stderr = logFile, logFile
	if err := worker.Start(); err != nil {
		return cleanCluster, fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- worker.Wait() }()
	stop := func() {
		_ = worker.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = worker.Process.Kill()
			<-exited
		}
		logFile.Close()
		cleanCluster()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		text, _ := os.ReadFile(logPath)
		if strings.Contains(string(text), "serving events") {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			cleanCluster()
			return nil, fmt.Errorf("the worker exited (%v) before serving; its log %s:\n%s", err, logPath, text)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("the worker did not serve within 60 s; its log %s:\n%s", logPath, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("worker pid %d serves resource manager %s (Gateway gateway-system/%s, ports 47000-47063); log %s\n",
		worker.Process.Pid, rm, gateway, logPath)
	// The example reads these as a master reads its own settings.
	os.Setenv("NATS_URL", natsURL)
	os.Setenv("ITG_RESOURCE_MANAGER", rm)
	os.Setenv("ITG_TASK_NAMESPACE", taskNS)
	return stop, nil
}
