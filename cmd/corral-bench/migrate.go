package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// benchMigrate live-migrates a disk-less guest between two nodes and back,
// timing the CLI call (it waits for the task) and reading the downtime
// libvirt measured on the destination.
func benchMigrate(ctx context.Context, b *bench) ([]figure, error) {
	return withLab(ctx, func(lab *testenv.Lab) ([]figure, error) {
		cl, err := startCluster(ctx, b, lab, "prod", []string{"n1", "n2"}, true)
		if err != nil {
			return nil, err
		}
		kernel, initrd, err := buildGuest(lab)
		if err != nil {
			return nil, err
		}
		n1, n2 := cl.nodes[0], cl.nodes[1]
		if err := cl.waitNodesReady(ctx, n1, 2*time.Minute, "n1", "n2"); err != nil {
			return nil, err
		}
		const vm = "mig"
		args := append([]string{"vm", "create", vm, "--node", "n1"}, guestArgs(kernel, initrd, migrateMemory)...)
		if out, err := cl.cli(ctx, n1, args...); err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}
		if out, err := cl.console(ctx, n1, vm, readyMarker, 120*time.Second); err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}

		var legs, downs, trips, elapsed []time.Duration
		result := func() []figure {
			if len(legs) == 0 {
				return nil
			}
			figs := []figure{{"one-way migration", secs(median(legs)), fmt.Sprintf("median of %d legs: %s; `vm migrate --node` (waits for the task), %s MiB guest", len(legs), list(legs), migrateMemory)}}
			if len(trips) > 0 {
				figs = append(figs, figure{"round trip", secs(median(trips)), fmt.Sprintf("median of %d: %s; n1 -> n2 -> n1", len(trips), list(trips))})
			}
			if len(elapsed) > 0 {
				figs = append(figs, figure{"libvirt migration", secs(median(elapsed)), fmt.Sprintf("median of %d: %s; 'Time elapsed' of the same domjobinfo: the rest of a leg is corral (task, agents, CLI)", len(elapsed), list(elapsed))})
			}
			if len(downs) > 0 {
				figs = append(figs, figure{"downtime", ms(median(downs)), fmt.Sprintf("median of %d: %s; 'Total downtime' of virsh domjobinfo --completed on the destination", len(downs), list(downs))})
			}
			return figs
		}
		leg := func(dst *node) (time.Duration, error) {
			start := time.Now()
			out, err := cl.cli(ctx, n1, "vm", "migrate", vm, "--node", dst.name)
			if err != nil {
				return 0, fmt.Errorf("%w: %s", err, out)
			}
			took := time.Since(start)
			v, err := cl.vm(ctx, n1, vm)
			if err != nil {
				return 0, err
			}
			if v.GetNode() != dst.name {
				return 0, fmt.Errorf("after migrate to %s the vm is placed on %q", dst.name, v.GetNode())
			}
			info, err := dst.host.Run(ctx, "virsh", "-c", dst.libvirt.LocalURI(), "domjobinfo", "prod-"+vm, "--completed")
			if err != nil {
				return 0, fmt.Errorf("domjobinfo on %s: %w", dst.name, err)
			}
			down, err := parseDowntime(info)
			if err != nil {
				return 0, fmt.Errorf("domjobinfo on %s: %w", dst.name, err)
			}
			if m := elapsedLine.FindStringSubmatch(info); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				elapsed = append(elapsed, time.Duration(n)*time.Millisecond)
			}
			legs, downs = append(legs, took), append(downs, down)
			b.log.Info("migrate: leg", "to", dst.name, "took", took, "downtime", down)
			return took, nil
		}
		for range b.runsOr(defaultMigrateRuns) {
			there, err := leg(n2)
			if err != nil {
				return result(), err
			}
			back, err := leg(n1)
			if err != nil {
				return result(), err
			}
			trips = append(trips, there+back)
		}
		if out, err := cl.cli(ctx, n1, "vm", "delete", vm); err != nil {
			return result(), fmt.Errorf("%w: %s", err, out)
		}
		return result(), nil
	})
}

var elapsedLine = regexp.MustCompile(`(?m)^Time elapsed:\s+(\d+)\s*ms`)

var downtimeLine = regexp.MustCompile(`(?m)^Total downtime:\s+(\d+)\s*ms`)

// parseDowntime reads "Total downtime: N ms" from virsh domjobinfo.
func parseDowntime(out string) (time.Duration, error) {
	m := downtimeLine.FindStringSubmatch(out)
	if m == nil {
		return 0, errors.New("no 'Total downtime' in: " + strings.TrimSpace(out))
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("downtime %q: %w", m[1], err)
	}
	return time.Duration(n) * time.Millisecond, nil
}
