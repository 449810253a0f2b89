package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// Migration defaults.
const (
	// DefaultMigrateTimeout bounds a migration whose context has no
	// deadline; a 192 MiB TCG guest takes 2-3 s between two local hosts.
	DefaultMigrateTimeout = 10 * time.Minute
	// migrateProgressPoll is how often job statistics are read.
	migrateProgressPoll = 250 * time.Millisecond
)

// MigrateOptions tune a live migration.
type MigrateOptions struct {
	// MaxDowntime is the longest pause tolerated at switch-over; 0 keeps
	// QEMU's default (300 ms).
	MaxDowntime time.Duration
	// BandwidthMiBs caps the transfer rate; 0 means unlimited.
	BandwidthMiBs uint64
	// Unsafe allows disks libvirt cannot prove shared (local test disks).
	Unsafe bool
	// TLS encrypts QEMU's migration stream (VIR_MIGRATE_TLS) with the
	// x509 files of both hosts' /etc/pki/qemu; use it with a qemu+tls://
	// destination URI, as production does.
	TLS bool
	// Dest, when set, is a connection to the destination's libvirtd; the
	// guest's downtime is read there once the migration completed.
	Dest *Conn
}

// Progress is a snapshot of the running migration job.
type Progress struct {
	Elapsed       time.Duration
	DataTotal     uint64
	DataProcessed uint64
	DataRemaining uint64
	MemDirtyRate  uint64 // pages/s
	Iteration     uint64
}

// MigrateResult reports a finished migration.
type MigrateResult struct {
	Duration   time.Duration // wall time of the perform phase
	DowntimeMs uint64        // guest pause at switch-over; 0 if no Dest
	Last       Progress      // last progress seen on the source
}

// Migrate live-migrates a running domain peer-to-peer to the libvirtd at
// destURI (e.g. qemu+tcp://10.77.0.2/system). The domain is made
// persistent on the destination and undefined here. Cancelling ctx aborts
// the migration, leaving the guest running here.
func (c *Conn) Migrate(ctx context.Context, name, destURI string, o MigrateOptions, progress func(Progress)) (MigrateResult, error) {
	var res MigrateResult
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultMigrateTimeout)
		defer cancel()
	}
	flags := libvirt.MigrateLive | libvirt.MigratePeer2peer | libvirt.MigratePersistDest | libvirt.MigrateUndefineSource
	if o.Unsafe {
		flags |= libvirt.MigrateUnsafe
	}
	if o.TLS {
		flags |= libvirt.MigrateTLS
	}
	var params []libvirt.TypedParam
	if o.BandwidthMiBs > 0 {
		params = append(params, libvirt.TypedParam{Field: libvirt.MigrateParamBandwidth, Value: *libvirt.NewTypedParamValueUllong(o.BandwidthMiBs)})
	}

	start := time.Now()
	done := make(chan error, 1)
	go func() {
		// Blocks for the whole migration; other calls on the connection
		// (job stats, abort) are multiplexed alongside it.
		_, err := c.l.DomainMigratePerform3Params(dom, libvirt.OptString{destURI}, params, nil, flags)
		done <- err
	}()

	tick := time.NewTicker(migrateProgressPoll)
	defer tick.Stop()
	downtimeSet := o.MaxDowntime == 0
	for {
		select {
		case err := <-done:
			res.Duration = time.Since(start)
			if err != nil {
				return res, fmt.Errorf("migrate %s to %s: %w", name, destURI, err)
			}
			if o.Dest != nil {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultCallTimeout)
				defer cancel()
				if res.DowntimeMs, err = o.Dest.CompletedJobDowntime(dctx, name); err != nil {
					return res, fmt.Errorf("migrate %s: migrated, but %w", name, err)
				}
			}
			return res, nil
		case <-ctx.Done():
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultCallTimeout)
			defer cancel()
			aerr := do(actx, DefaultCallTimeout, func() error { return c.l.DomainAbortJob(dom) })
			// Wait for the perform call to return so the caller knows where
			// the guest is when we return.
			select {
			case <-done:
			case <-actx.Done():
			}
			return res, fmt.Errorf("migrate %s: aborted: %w", name, errors.Join(ctx.Err(), aerr))
		case <-tick.C:
			p, active, err := c.jobProgress(ctx, dom, 0)
			if err != nil || !active {
				continue // the job may not have started yet, or just ended
			}
			if !downtimeSet {
				// Set once the job exists: libvirt resets migration
				// parameters when a migration starts.
				ms := uint64(o.MaxDowntime / time.Millisecond)
				if err := do(ctx, DefaultCallTimeout, func() error { return c.l.DomainMigrateSetMaxDowntime(dom, ms, 0) }); err != nil {
					c.log.Warn("cannot set migration max downtime", "vm", name, "err", err)
				}
				downtimeSet = true
			}
			res.Last = p
			if progress != nil {
				progress(p)
			}
		}
	}
}

func (c *Conn) jobProgress(ctx context.Context, dom libvirt.Domain, flags libvirt.DomainGetJobStatsFlags) (Progress, bool, error) {
	type js struct {
		typ    int32
		params []libvirt.TypedParam
	}
	r, err := call(ctx, DefaultCallTimeout, func() (js, error) {
		t, p, err := c.l.DomainGetJobStats(dom, flags)
		return js{t, p}, err
	})
	if err != nil {
		return Progress{}, false, err
	}
	if libvirt.DomainJobType(r.typ) == libvirt.DomainJobNone {
		return Progress{}, false, nil
	}
	v := typedParams(r.params)
	return Progress{
		Elapsed:       time.Duration(v["time_elapsed"]) * time.Millisecond,
		DataTotal:     v["data_total"],
		DataProcessed: v["data_processed"],
		DataRemaining: v["data_remaining"],
		MemDirtyRate:  v["memory_dirty_rate"],
		Iteration:     v["memory_iteration"],
	}, true, nil
}

// typedParams flattens the integer job statistics.
func typedParams(ps []libvirt.TypedParam) map[string]uint64 {
	out := make(map[string]uint64, len(ps))
	for _, p := range ps {
		switch v := p.Value.I.(type) {
		case uint64:
			out[p.Field] = v
		case int64:
			out[p.Field] = uint64(v)
		case uint32:
			out[p.Field] = uint64(v)
		case int32:
			out[p.Field] = uint64(v)
		}
	}
	return out
}

// CompletedJobDowntime returns the downtime of the last completed job of
// a domain, which after a migration is known only on the destination.
func (c *Conn) CompletedJobDowntime(ctx context.Context, name string) (uint64, error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("completed job: %w", err)
	}
	type js struct {
		typ    int32
		params []libvirt.TypedParam
	}
	r, err := call(ctx, DefaultCallTimeout, func() (js, error) {
		// Keep: without it libvirt forgets the statistics once read.
		t, p, err := c.l.DomainGetJobStats(dom, libvirt.DomainJobStatsCompleted|libvirt.DomainJobStatsKeepCompleted)
		return js{t, p}, err
	})
	if err != nil {
		return 0, fmt.Errorf("completed job of %s: %w", name, err)
	}
	d, ok := typedParams(r.params)["downtime"]
	if !ok {
		return 0, fmt.Errorf("completed job of %s: no downtime reported (job type %d)", name, r.typ)
	}
	return d, nil
}
