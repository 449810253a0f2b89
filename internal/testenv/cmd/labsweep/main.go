// Command labsweep cleans the test labs under /tmp/corral-labs whose owning
// process died (namespaces, processes, QEMU guests, directories), as every
// new lab does first; for CI and `make clean` after an interrupted run.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/minet/corral/internal/testenv"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testenv.Sweep(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "labsweep:", err)
		os.Exit(1)
	}
}
