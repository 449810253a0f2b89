package main

import (
	"context"
	"fmt"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// benchVM creates kernel-boot VMs one after the other and times create to
// the guest's GUEST-READY line, read through `corral vm console`.
func benchVM(ctx context.Context, b *bench) ([]figure, error) {
	return withLab(ctx, func(lab *testenv.Lab) ([]figure, error) {
		cl, err := startCluster(ctx, b, lab, "prod", []string{"n1", "n2", "n3"}, true)
		if err != nil {
			return nil, err
		}
		kernel, initrd, err := buildGuest(lab)
		if err != nil {
			return nil, err
		}
		n1 := cl.nodes[0]
		if err := cl.waitNodesReady(ctx, n1, 2*time.Minute, "n1", "n2", "n3"); err != nil {
			return nil, err
		}
		var creates, readies, uptimes []time.Duration
		result := func() []figure {
			if len(readies) == 0 {
				return nil
			}
			b.guestBoot = median(readies)
			return []figure{
				{"create to GUEST-READY", secs(median(readies)), fmt.Sprintf("median of %d: %s; `vm create` start to the ready line in `vm console --until` on n1", len(readies), list(readies))},
				{"vm create call", secs(median(creates)), fmt.Sprintf("median of %d: %s; the CLI call alone: commit, placement, agent defines and starts the domain (returns once reported running)", len(creates), list(creates))},
				{"guest's own boot", secs(median(uptimes)), "median guest /proc/uptime at its ready line (kernel + init, TCG: no /dev/kvm here)"},
			}
		}
		for i := 1; i <= b.runsOr(defaultVMRuns); i++ {
			name := fmt.Sprintf("v%d", i)
			start := time.Now()
			if out, err := cl.cli(ctx, n1, append([]string{"vm", "create", name}, guestArgs(kernel, initrd, guestMemory)...)...); err != nil {
				return result(), fmt.Errorf("%w: %s", err, out)
			}
			created := time.Since(start)
			if out, err := cl.console(ctx, n1, name, "GUEST-READY", 120*time.Second); err != nil {
				return result(), fmt.Errorf("%w: %s", err, out)
			}
			ready := time.Since(start)
			out, err := cl.console(ctx, n1, name, readyMarker, 30*time.Second)
			if err != nil {
				return result(), fmt.Errorf("%w: %s", err, out)
			}
			_, up, ok := parseBoot(out)
			if !ok {
				return result(), fmt.Errorf("no boot line in the console of %s: %.500s", name, out)
			}
			creates, readies, uptimes = append(creates, created), append(readies, ready), append(uptimes, up)
			b.log.Info("vm: ready", "vm", name, "create", created, "ready", ready, "guest_uptime", up)
			if out, err := cl.cli(ctx, n1, "vm", "delete", name); err != nil {
				return result(), fmt.Errorf("%w: %s", err, out)
			}
		}
		return result(), nil
	})
}
