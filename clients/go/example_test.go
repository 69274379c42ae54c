package itg_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	itg "internal-task-gateway.io/clients/go"
)

// A task's whole life as a master sees it: publish started, wait for the addresses, publish ended, wait
// for the removal. The settings come from the environment here; a master reads them from its config.
func Example() {
	nc, err := nats.Connect(os.Getenv("NATS_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	client, err := itg.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	rm := os.Getenv("ITG_RESOURCE_MANAGER")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	alloc := itg.NewEventID() + ".1"
	_, err = client.Started(ctx, rm, itg.Started{
		AllocationID: alloc,
		Namespace:    os.Getenv("ITG_TASK_NAMESPACE"),
		PodSelector:  map[string]string{"determined.ai/allocation_id": alloc},
		ProxyPorts:   []itg.ProxyPort{{Name: "jupyter", Port: 8888}},
	})
	if err != nil {
		log.Fatal(err)
	}
	reply, err := client.Await(ctx, rm, alloc)
	var failed *itg.FailedError
	switch {
	case errors.As(err, &failed):
		fmt.Println("not exposed:", failed.Failed.Reason, "retryable:", failed.Retryable())
		return
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("ready:", reply.Ready.Proxies[0].Name, "on the Gateway's port range:",
		reply.Ready.Proxies[0].GatewayPort >= 47000)

	if _, err := client.Ended(ctx, rm, itg.Ended{AllocationID: alloc}); err != nil {
		log.Fatal(err)
	}
	reply, err = client.Await(ctx, rm, alloc)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("removed, ports released:", len(reply.Removed.Released))
	// Output:
	// ready: jupyter on the Gateway's port range: true
	// removed, ports released: 1
}
