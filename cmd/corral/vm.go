package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func (a *app) vmTable(vms []*pb.VM) *table {
	t := newTable("NAME", "STATE", "POWER", "NODE", "VCPUS", "MEMORY", "HA", "AGE")
	for _, v := range vms {
		state := vmState(v.GetStatus().GetState())
		if v.GetDeleting() {
			state = "deleting"
		} else if v.GetMigratingTo() != "" {
			state = "migrating→" + v.GetMigratingTo()
		}
		t.row(v.GetName(), state, power(v.GetPower()), v.GetNode(), fmt.Sprint(v.GetSpec().GetVcpus()),
			humanMiB(v.GetSpec().GetMemoryMib()), haMode(v.GetSpec().GetHa()), a.age(v.GetCreatedUnixNano()))
	}
	return t
}

// specFlags are the VMSpec flags shared by vm create and vm edit.
type specFlags struct {
	vcpus                   int32
	memory                  string
	kernel, initrd, cmdline string
	disks, nets             []string
	ha                      string
	haPriority              int32
	haGroup, antiAffinity   string
	ciUser, userData        string
	sshKeys                 []string
	uefi, vnc, guestAgent   bool
	machine, cpuModel       string
}

func (f *specFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.Int32Var(&f.vcpus, "vcpus", 1, "virtual CPUs")
	fl.StringVar(&f.memory, "memory", "256", "memory in MiB, or with a unit (1G)")
	fl.StringVar(&f.kernel, "kernel", "", "kernel image path on the nodes (direct boot)")
	fl.StringVar(&f.initrd, "initrd", "", "initrd path on the nodes")
	fl.StringVar(&f.cmdline, "cmdline", "", "kernel command line")
	fl.StringArrayVar(&f.disks, "disk", nil, "volume POOL/VOLUME to attach, ':ro' for read-only (repeatable, in order)")
	fl.StringArrayVar(&f.nets, "net", nil, "network NETWORK or NETWORK=MAC to attach (repeatable, in order)")
	fl.StringVar(&f.ha, "ha", "off", "on node loss: restart elsewhere or off")
	fl.Int32Var(&f.haPriority, "ha-priority", 0, "higher restarts first")
	fl.StringVar(&f.haGroup, "ha-group", "", "HA group")
	fl.StringVar(&f.antiAffinity, "anti-affinity", "", "VMs with the same anti-affinity tag avoid sharing a node")
	fl.StringVar(&f.ciUser, "cloud-init-user", "", "cloud-init default user")
	fl.StringArrayVar(&f.sshKeys, "ssh-key", nil, "authorized SSH key, or @FILE of keys (repeatable)")
	fl.StringVar(&f.userData, "user-data", "", "file with raw #cloud-config user data")
	fl.BoolVar(&f.uefi, "uefi", false, "boot with UEFI firmware")
	fl.BoolVar(&f.vnc, "vnc", false, "add a VNC display")
	fl.BoolVar(&f.guestAgent, "guest-agent", false, "add the QEMU guest agent channel")
	fl.StringVar(&f.machine, "machine", "", "QEMU machine type (default: the hypervisor's)")
	fl.StringVar(&f.cpuModel, "cpu-model", "", "CPU model (default: host-model where possible)")
}

// apply copies the flags into spec: every flag when all (create), else only
// those given on the command line (edit).
func (f *specFlags) apply(cmd *cobra.Command, name string, spec *pb.VMSpec, all bool) error {
	set := func(flag string) bool { return all || cmd.Flags().Changed(flag) }
	if set("vcpus") {
		spec.Vcpus = f.vcpus
	}
	if set("memory") {
		m, err := parseMiB(f.memory)
		if err != nil {
			return usageErrorf("--memory: %v", err)
		}
		spec.MemoryMib = m
	}
	strs := []struct {
		flag string
		dst  *string
		val  string
	}{
		{"kernel", &spec.Kernel, f.kernel}, {"initrd", &spec.Initrd, f.initrd}, {"cmdline", &spec.Cmdline, f.cmdline},
		{"ha-group", &spec.HaGroup, f.haGroup}, {"anti-affinity", &spec.AntiAffinity, f.antiAffinity},
		{"machine", &spec.Machine, f.machine}, {"cpu-model", &spec.CpuModel, f.cpuModel},
	}
	for _, s := range strs {
		if set(s.flag) {
			*s.dst = s.val
		}
	}
	bools := []struct {
		flag string
		dst  *bool
		val  bool
	}{{"uefi", &spec.Uefi, f.uefi}, {"vnc", &spec.Vnc, f.vnc}, {"guest-agent", &spec.GuestAgent, f.guestAgent}}
	for _, b := range bools {
		if set(b.flag) {
			*b.dst = b.val
		}
	}
	if set("ha-priority") {
		spec.HaPriority = f.haPriority
	}
	if set("ha") {
		switch f.ha {
		case "off", "":
			spec.Ha = pb.HAMode_HA_MODE_OFF
		case "restart":
			spec.Ha = pb.HAMode_HA_MODE_RESTART
		default:
			return usageErrorf("--ha %q: use restart or off", f.ha)
		}
	}
	if set("disk") {
		disks, err := parseDisks(f.disks)
		if err != nil {
			return err
		}
		spec.Disks = disks
	}
	if set("net") {
		spec.Nics = parseNICs(f.nets, spec.GetNics())
	}
	if cmd.Flags().Changed("cloud-init-user") || cmd.Flags().Changed("ssh-key") || cmd.Flags().Changed("user-data") {
		ci := spec.GetCloudInit()
		if ci == nil {
			ci = &pb.CloudInit{Hostname: name}
		}
		if cmd.Flags().Changed("cloud-init-user") {
			ci.User = f.ciUser
		}
		if cmd.Flags().Changed("ssh-key") {
			keys, err := readKeys(f.sshKeys)
			if err != nil {
				return err
			}
			ci.SshAuthorizedKeys = keys
		}
		if cmd.Flags().Changed("user-data") {
			data, err := os.ReadFile(f.userData)
			if err != nil {
				return fmt.Errorf("--user-data: %w", err)
			}
			ci.UserData = string(data)
		}
		spec.CloudInit = ci
	}
	return nil
}

// parseDisks reads POOL/VOLUME[:ro] arguments.
func parseDisks(args []string) ([]*pb.DiskSpec, error) {
	var out []*pb.DiskSpec
	for _, arg := range args {
		ref, ro := strings.CutSuffix(arg, ":ro")
		pool, vol, err := splitVolume(ref)
		if err != nil {
			return nil, usageErrorf("--disk: %v", err)
		}
		out = append(out, &pb.DiskSpec{Pool: pool, Volume: vol, ReadOnly: ro})
	}
	return out, nil
}

// parseNICs reads NETWORK[=MAC] arguments. A NIC on a network the VM is
// already on keeps its MAC unless one is given, so editing the list does
// not change the guest's addresses.
func parseNICs(args []string, current []*pb.NICSpec) []*pb.NICSpec {
	known := map[string][]string{}
	for _, n := range current {
		known[n.GetNetwork()] = append(known[n.GetNetwork()], n.GetMac())
	}
	var out []*pb.NICSpec
	for _, arg := range args {
		netName, mac, _ := strings.Cut(arg, "=")
		if mac == "" && len(known[netName]) > 0 {
			mac, known[netName] = known[netName][0], known[netName][1:]
		}
		out = append(out, &pb.NICSpec{Network: netName, Mac: mac})
	}
	return out
}

func readKeys(args []string) ([]string, error) {
	var keys []string
	for _, k := range args {
		file, ok := strings.CutPrefix(k, "@")
		if !ok {
			keys = append(keys, k)
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--ssh-key: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				keys = append(keys, line)
			}
		}
	}
	return keys, nil
}

// splitVolume reads POOL/NAME.
func splitVolume(ref string) (pool, name string, err error) {
	pool, name, ok := strings.Cut(ref, "/")
	if !ok || pool == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("volume %q: write it POOL/NAME", ref)
	}
	return pool, name, nil
}

func (a *app) vmCmd() *cobra.Command {
	complete := a.completeNames(listVMNames)

	var sf specFlags
	var node, from string
	var dryRun, full, noStart bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM (and start it unless --no-start)",
		Example: "  corral vm create web --vcpus 2 --memory 2G --from rbd/debian12 --net vlan42 --ssh-key @~/.ssh/id_ed25519.pub --ha restart\n" +
			"  corral vm create test --kernel /boot/vmlinuz --initrd /boot/initrd.img --cmdline console=ttyS0 --dry-run",
		Args: argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := &pb.VMSpec{}
			if err := sf.apply(cmd, args[0], spec, true); err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.VMs.CreateVM(ctx, &pb.CreateVMRequest{
					Cluster: cluster, Name: args[0], Spec: spec, Node: node, DryRun: dryRun,
					Start: !noStart, From: from, FullCopy: full,
				})
				if err != nil {
					return err
				}
				if dryRun {
					return a.print(resp, placementText(resp))
				}
				return a.print(resp.GetVm(), a.vmTable([]*pb.VM{resp.GetVm()}))
			})
		},
	}
	sf.register(create)
	cf := create.Flags()
	cf.StringVar(&node, "node", "", "place on this node instead of letting the scheduler choose")
	cf.BoolVar(&dryRun, "dry-run", false, "only show where the VM would go and why")
	cf.StringVar(&from, "from", "", "template POOL/VOLUME (or VM) to clone the boot disk from")
	cf.BoolVar(&full, "full", false, "full copy instead of a linked clone")
	cf.BoolVar(&noStart, "no-start", false, "create the VM stopped")
	_ = create.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))
	_ = create.RegisterFlagCompletionFunc("net", a.completeNames(listNetworkNames))

	var listNode string
	list := &cobra.Command{
		Use:   "list",
		Short: "List VMs",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.VMs.ListVMs(ctx, &pb.ListVMsRequest{Cluster: cluster, Node: listNode, Consistent: a.consistent})
				if err != nil {
					return err
				}
				return a.print(resp, a.vmTable(resp.GetVms()))
			})
		},
	}
	list.Flags().StringVar(&listNode, "node", "", "only the VMs placed on this node")
	_ = list.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))

	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a VM's spec and status",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.VMs.GetVM(ctx, &pb.GetVMRequest{Cluster: cluster, Name: args[0], Consistent: a.consistent})
				if err != nil {
					return err
				}
				return a.print(resp.GetVm(), nil)
			})
		},
	}

	// power makes the one-call commands that answer with the VM.
	powerCmd := func(use, short string, call func(ctx context.Context, c *client.Client, cluster, name string) (*pb.VM, error)) *cobra.Command {
		return &cobra.Command{
			Use:               use + " NAME",
			Short:             short,
			Args:              argNames("NAME"),
			ValidArgsFunction: complete,
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
					vm, err := call(ctx, c, cluster, args[0])
					if err != nil {
						return err
					}
					return a.print(vm, a.vmTable([]*pb.VM{vm}))
				})
			},
		}
	}
	start := powerCmd("start", "Start a VM", func(ctx context.Context, c *client.Client, cluster, name string) (*pb.VM, error) {
		r, err := c.VMs.StartVM(ctx, &pb.StartVMRequest{Cluster: cluster, Name: name})
		return r.GetVm(), err
	})
	// As in Proxmox: stop pulls the plug, shutdown asks the guest (ACPI).
	stop := powerCmd("stop", "Stop a VM at once (power off)", func(ctx context.Context, c *client.Client, cluster, name string) (*pb.VM, error) {
		r, err := c.VMs.StopVM(ctx, &pb.StopVMRequest{Cluster: cluster, Name: name, Force: true})
		return r.GetVm(), err
	})
	stop.Flags().Bool("force", true, "")
	_ = stop.Flags().MarkHidden("force") // stop is always forced; accepted for habit
	shutdown := powerCmd("shutdown", "Ask the guest to shut down (ACPI)", func(ctx context.Context, c *client.Client, cluster, name string) (*pb.VM, error) {
		r, err := c.VMs.StopVM(ctx, &pb.StopVMRequest{Cluster: cluster, Name: name, Force: false})
		return r.GetVm(), err
	})
	reboot := powerCmd("reboot", "Reboot a VM", func(ctx context.Context, c *client.Client, cluster, name string) (*pb.VM, error) {
		r, err := c.VMs.RebootVM(ctx, &pb.RebootVMRequest{Cluster: cluster, Name: name})
		return r.GetVm(), err
	})

	var keepDisks bool
	del := &cobra.Command{
		Use:               "delete NAME",
		Short:             "Delete a VM and, unless --keep-disks, its disks",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				if _, err := c.VMs.DeleteVM(ctx, &pb.DeleteVMRequest{Cluster: cluster, Name: args[0], KeepDisks: keepDisks}); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "VM %s deleted\n", args[0])
				return nil
			})
		},
	}
	del.Flags().BoolVar(&keepDisks, "keep-disks", false, "keep the VM's volumes")

	var ef specFlags
	edit := &cobra.Command{
		Use:               "edit NAME",
		Short:             "Change a VM's spec (only the flags given)",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				cur, err := c.VMs.GetVM(ctx, &pb.GetVMRequest{Cluster: cluster, Name: args[0], Consistent: true})
				if err != nil {
					return err
				}
				spec := cur.GetVm().GetSpec()
				if spec == nil {
					spec = &pb.VMSpec{}
				}
				if err := ef.apply(cmd, args[0], spec, false); err != nil {
					return err
				}
				resp, err := c.VMs.UpdateVM(ctx, &pb.UpdateVMRequest{
					Cluster: cluster, Name: args[0], Spec: spec, ExpectedGeneration: cur.GetVm().GetGeneration(),
				})
				if err != nil {
					return err
				}
				return a.print(resp.GetVm(), a.vmTable([]*pb.VM{resp.GetVm()}))
			})
		},
	}
	ef.register(edit)

	var toNode string
	var maxDowntime time.Duration
	var bandwidth int64
	var noWait bool
	migrate := &cobra.Command{
		Use:               "migrate NAME",
		Short:             "Live-migrate a running VM (to --node, or where the scheduler says)",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.VMs.MigrateVM(ctx, &pb.MigrateVMRequest{
					Cluster: cluster, Name: args[0], Node: toNode,
					MaxDowntimeMs: maxDowntime.Milliseconds(), BandwidthMibs: bandwidth,
				})
				if err != nil {
					return err
				}
				return a.finishTask(ctx, c, cluster, resp.GetTask(), noWait)
			})
		},
	}
	mf := migrate.Flags()
	mf.StringVar(&toNode, "node", "", "destination node")
	mf.DurationVar(&maxDowntime, "max-downtime", 0, "longest pause tolerated at switch-over, e.g. 300ms (default: the server's)")
	mf.Int64Var(&bandwidth, "bandwidth", 0, "bandwidth cap in MiB/s (default: none)")
	mf.BoolVar(&noWait, "no-wait", false, "return once the migration started")
	_ = migrate.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))

	var moveTo string
	move := &cobra.Command{
		Use:               "move NAME --node NODE",
		Short:             "Move a stopped VM to another node (cold move; its disks must be shared)",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			if moveTo == "" {
				return usageErrorf("--node is required")
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				r, err := c.VMs.MoveVM(ctx, &pb.MoveVMRequest{Cluster: cluster, Name: args[0], Node: moveTo})
				if err != nil {
					return err
				}
				return a.print(r.GetVm(), a.vmTable([]*pb.VM{r.GetVm()}))
			})
		},
	}
	move.Flags().StringVar(&moveTo, "node", "", "destination node")
	_ = move.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))

	return group("vm", "Manage virtual machines",
		create, list, show, start, stop, shutdown, reboot, del, edit, migrate, move, a.consoleCmd(complete))
}

// placementText renders a dry run: why each node fits or not, and the
// node chosen.
func placementText(resp *pb.CreateVMResponse) renderFunc {
	return func(w io.Writer) error {
		t := newTable("NODE", "FITS", "REASON")
		for _, p := range resp.GetPlacements() {
			t.row(p.GetNode(), yesNo(p.GetFits()), p.GetReason())
		}
		if err := t.write(w); err != nil {
			return err
		}
		if n := resp.GetVm().GetNode(); n != "" {
			_, err := fmt.Fprintf(w, "\nChosen node: %s\n", n)
			return err
		}
		_, err := fmt.Fprintln(w, "\nNo node fits.")
		return err
	}
}

func (a *app) consoleCmd(complete func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective)) *cobra.Command {
	var replay bool
	var forDur time.Duration
	var until string
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a VM's serial console (escape with Ctrl-])",
		Long: "Attaches to the serial console of a VM on whichever node runs it. On a terminal, keys go to the guest\n" +
			"until Ctrl-]. Without a terminal, standard input is sent as is and output copied: with --until the command\n" +
			"exits 0 as soon as the output contains the string (1 if --for runs out first); with --for alone it\n" +
			"detaches after that long.",
		Example:           "  corral vm console web --for 60s --until 'login:' </dev/null",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				// A timer, not a context deadline: a deadline travels to the
				// server (grpc-timeout), which may end the stream first
				// (RST_STREAM CANCEL), and a planned detach would look like
				// a failure.
				var timedOut atomic.Bool
				if forDur > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithCancel(ctx)
					defer cancel()
					timer := time.AfterFunc(forDur, func() { timedOut.Store(true); cancel() })
					defer timer.Stop()
				}
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				out := a.out
				var seen *untilWriter
				if until != "" {
					seen = &untilWriter{w: a.out, needle: []byte(until), found: cancel}
					out = seen
				}
				if f, ok := a.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					fmt.Fprintf(a.errOut, "Connected to %s, escape is ^]\n", args[0])
					old, err := term.MakeRaw(int(f.Fd()))
					if err != nil {
						return fmt.Errorf("raw terminal: %w", err)
					}
					defer func() {
						_ = term.Restore(int(f.Fd()), old)
						fmt.Fprintln(a.errOut) // the guest's last line may lack one
					}()
				} else {
					fmt.Fprintf(a.errOut, "Connected to %s\n", args[0])
				}
				err := c.Console(ctx, cluster, args[0], a.in, out, client.EscapeKey, client.WithReplay(replay))
				switch {
				case seen != nil && seen.matched():
					return nil
				case seen != nil && (err == nil || timedOut.Load()):
					return fmt.Errorf("console of %s: %q not seen", args[0], until)
				case timedOut.Load():
					return nil // ran for the time asked
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&replay, "replay", true, "first show the console output since boot")
	cmd.Flags().DurationVar(&forDur, "for", 0, "detach after this long")
	cmd.Flags().StringVar(&until, "until", "", "detach with success once the output contains this string")
	return cmd
}

// untilWriter copies console output and calls found once needle appeared,
// even split across writes.
type untilWriter struct {
	w      io.Writer
	needle []byte
	found  func()

	mu   sync.Mutex
	tail []byte
	hit  bool
}

func (u *untilWriter) Write(p []byte) (int, error) {
	n, err := u.w.Write(p)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hit {
		return n, err
	}
	buf := append(u.tail, p...)
	if bytes.Contains(buf, u.needle) {
		u.hit = true
		u.found()
		return n, err
	}
	if keep := len(u.needle) - 1; len(buf) > keep {
		buf = buf[len(buf)-keep:]
	}
	u.tail = bytes.Clone(buf)
	return n, err
}

func (u *untilWriter) matched() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hit
}
