package hypervisor

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func baseSpec() Spec {
	return Spec{
		Name: "web-1", UUID: "7c9e6679-7425-40de-944b-e07fc1f90ae7",
		Cluster: "prod", VMID: "vm-0042",
		Type: TypeQEMU, VCPUs: 1, MemoryMiB: 192,
	}
}

func goldenSpecs() map[string]Spec {
	kernel := baseSpec()
	kernel.Kernel, kernel.Initrd, kernel.Cmdline = "/var/lib/corral/k/vmlinuz", "/var/lib/corral/k/initrd.gz", "console=ttyS0"
	kernel.SerialLog = "/var/log/corral/web-1.serial"

	rbd := baseSpec()
	rbd.Name, rbd.Type, rbd.VCPUs, rbd.MemoryMiB, rbd.Machine = "db-1", TypeKVM, 4, 8192, "q35"
	rbd.Disks = []Disk{
		{Target: "vda", RBD: &RBDSource{Pool: "rbd", Image: "vm-0042-disk0", Monitors: []string{"10.77.0.100:3300", "[fd00::1]:3300"}, User: "corral", SecretUUID: "0b4e5e8c-6f1a-4d2c-9a33-0c1b2d3e4f50"}},
		{Target: "vdb", File: "/srv/iso/seed.img", ReadOnly: true, Format: "raw"},
		{Target: "sda", File: "/srv/disk.qcow2", Format: "qcow2", Bus: "sata"},
	}
	rbd.NICs = []NIC{
		{MAC: "52:54:00:12:34:56", Bridge: "br-ovs", OVS: true, VLAN: 100, Target: "tap-db1"},
		{MAC: "52:54:00:12:34:57", Bridge: "br-v200", Model: "e1000"},
	}
	rbd.GuestAgent, rbd.VNC = true, true

	uefi := baseSpec()
	uefi.Name, uefi.Type, uefi.Machine, uefi.UEFI, uefi.CPUModel = "win-1", TypeKVM, "q35", true, "Skylake-Server"
	uefi.Disks = []Disk{{Target: "vda", File: "/srv/win.qcow2", Format: "qcow2"}}
	uefi.VNC = true
	return map[string]Spec{"kernel-boot": kernel, "rbd-ovs": rbd, "uefi": uefi}
}

func TestDomainXMLGolden(t *testing.T) {
	for name, spec := range goldenSpecs() {
		t.Run(name, func(t *testing.T) {
			got, err := DomainXML(spec)
			if err != nil {
				t.Fatalf("DomainXML: %v", err)
			}
			path := filepath.Join("testdata", name+".xml")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create): %v", err)
			}
			if got != string(want) {
				t.Errorf("XML differs from %s (run with -update if intended):\n%s", path, got)
			}
		})
	}
}

// TestDomainXMLParsesBack checks the document through libvirtxml's own
// parser: what libvirt reads is what the spec said.
func TestDomainXMLParsesBack(t *testing.T) {
	specs := goldenSpecs()
	parse := func(t *testing.T, s Spec) *libvirtxml.Domain {
		t.Helper()
		doc, err := DomainXML(s)
		if err != nil {
			t.Fatal(err)
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(doc); err != nil {
			t.Fatalf("unmarshal: %v\n%s", err, doc)
		}
		return &d
	}

	t.Run("kernel-boot", func(t *testing.T) {
		s := specs["kernel-boot"]
		d := parse(t, s)
		check(t, "type", d.Type, "qemu")
		check(t, "name", d.Name, s.Name)
		check(t, "uuid", d.UUID, s.UUID)
		check(t, "memory", d.Memory.Value, uint(192))
		check(t, "memory unit", d.Memory.Unit, "MiB")
		check(t, "vcpu", d.VCPU.Value, uint(1))
		check(t, "machine", d.OS.Type.Machine, DefaultMachine)
		check(t, "kernel", d.OS.Kernel, s.Kernel)
		check(t, "initrd", d.OS.Initrd, s.Initrd)
		check(t, "cmdline", d.OS.Cmdline, s.Cmdline)
		if d.CPU != nil {
			t.Errorf("tcg domain has a <cpu>: %+v", d.CPU)
		}
		if len(d.Devices.Serials) != 1 || d.Devices.Serials[0].Source.Pty == nil || d.Devices.Serials[0].Log == nil {
			t.Fatalf("want one pty serial with a log, got %+v", d.Devices.Serials)
		}
		check(t, "serial log", *d.Devices.Serials[0].Log, libvirtxml.DomainChardevLog{File: s.SerialLog, Append: "on"})
		if len(d.Devices.Consoles) != 1 {
			t.Errorf("want a console, got %d", len(d.Devices.Consoles))
		}
		o, err := parseOwnership(d.Metadata.XML)
		if err != nil {
			t.Fatal(err)
		}
		check(t, "owner", o.Cluster+"/"+o.VMID, "prod/vm-0042")
		if len(d.Devices.Disks)+len(d.Devices.Interfaces)+len(d.Devices.Graphics)+len(d.Devices.Channels) != 0 {
			t.Errorf("unexpected devices: %+v", d.Devices)
		}
	})

	t.Run("rbd-ovs", func(t *testing.T) {
		s := specs["rbd-ovs"]
		d := parse(t, s)
		check(t, "type", d.Type, "kvm")
		check(t, "machine", d.OS.Type.Machine, "q35")
		check(t, "cpu mode", d.CPU.Mode, "host-model")
		if len(d.Devices.Disks) != 3 {
			t.Fatalf("want 3 disks, got %d", len(d.Devices.Disks))
		}
		r := d.Devices.Disks[0]
		if r.Source == nil || r.Source.Network == nil {
			t.Fatalf("disk 0 is not a network disk: %+v", r.Source)
		}
		n := r.Source.Network
		check(t, "protocol", n.Protocol, "rbd")
		check(t, "rbd name", n.Name, "rbd/vm-0042-disk0")
		check(t, "hosts", n.Hosts, []libvirtxml.DomainDiskSourceHost{{Name: "10.77.0.100", Port: "3300"}, {Name: "fd00::1", Port: "3300"}})
		check(t, "auth", *n.Auth, libvirtxml.DomainDiskAuth{Username: "corral", Secret: &libvirtxml.DomainDiskSecret{Type: "ceph", UUID: "0b4e5e8c-6f1a-4d2c-9a33-0c1b2d3e4f50"}})
		check(t, "target", *r.Target, libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"})
		check(t, "rbd format", r.Driver.Type, "raw")
		ro := d.Devices.Disks[1]
		check(t, "file", ro.Source.File.File, "/srv/iso/seed.img")
		if ro.ReadOnly == nil {
			t.Error("vdb not read-only")
		}
		q := d.Devices.Disks[2]
		check(t, "qcow2", q.Driver.Type, "qcow2")
		check(t, "sata", q.Target.Bus, "sata")

		if len(d.Devices.Interfaces) != 2 {
			t.Fatalf("want 2 NICs, got %d", len(d.Devices.Interfaces))
		}
		ovs := d.Devices.Interfaces[0]
		check(t, "mac", ovs.MAC.Address, "52:54:00:12:34:56")
		check(t, "bridge", ovs.Source.Bridge.Bridge, "br-ovs")
		if ovs.VirtualPort == nil || ovs.VirtualPort.Params == nil || ovs.VirtualPort.Params.OpenVSwitch == nil {
			t.Errorf("no openvswitch virtualport: %+v", ovs.VirtualPort)
		}
		check(t, "vlan", ovs.VLan.Tags, []libvirtxml.DomainInterfaceVLanTag{{ID: 100}})
		check(t, "model", ovs.Model.Type, "virtio")
		check(t, "tap", ovs.Target.Dev, "tap-db1")
		lin := d.Devices.Interfaces[1]
		if lin.VirtualPort != nil || lin.VLan != nil {
			t.Errorf("linux bridge NIC has OVS settings: %+v %+v", lin.VirtualPort, lin.VLan)
		}
		check(t, "model", lin.Model.Type, "e1000")
		if len(d.Devices.Channels) != 1 || d.Devices.Channels[0].Target.VirtIO.Name != "org.qemu.guest_agent.0" {
			t.Errorf("no guest agent channel: %+v", d.Devices.Channels)
		}
		if len(d.Devices.Graphics) != 1 || d.Devices.Graphics[0].VNC == nil {
			t.Errorf("no VNC: %+v", d.Devices.Graphics)
		}
	})

	t.Run("uefi", func(t *testing.T) {
		s := specs["uefi"]
		d := parse(t, s)
		check(t, "loader", *d.OS.Loader, libvirtxml.DomainLoader{Path: Firmware.Code, Readonly: "yes", Type: "pflash"})
		check(t, "nvram template", d.OS.NVRam.Template, Firmware.Vars)
		check(t, "cpu", *d.CPU.Model, libvirtxml.DomainCPUModel{Value: "Skylake-Server", Fallback: "forbid"})
		check(t, "cpu mode", d.CPU.Mode, "custom")
		if d.OS.Kernel != "" {
			t.Errorf("kernel set: %q", d.OS.Kernel)
		}
		if len(d.OS.BootDevices) == 0 || d.OS.BootDevices[0].Dev != "hd" {
			t.Errorf("want boot from hd first, got %+v", d.OS.BootDevices)
		}
	})
}

func check[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: got %+v, want %+v", what, got, want)
	}
}

func TestValidate(t *testing.T) {
	good := baseSpec()
	rbdDisk := func(f func(*RBDSource)) Spec {
		s := baseSpec()
		r := &RBDSource{Pool: "rbd", Image: "i", Monitors: []string{"10.0.0.1:3300"}, User: "corral", SecretUUID: "0b4e5e8c-6f1a-4d2c-9a33-0c1b2d3e4f50"}
		f(r)
		s.Disks = []Disk{{Target: "vda", RBD: r}}
		return s
	}
	with := func(f func(*Spec)) Spec { s := baseSpec(); f(&s); return s }
	nic := func(n NIC) Spec {
		s := baseSpec()
		if n.MAC == "" {
			n.MAC = "52:54:00:00:00:01"
		}
		s.NICs = []NIC{n}
		return s
	}
	tests := []struct {
		name  string
		spec  Spec
		field string // "" = valid
	}{
		{"valid", good, ""},
		{"valid without uuid", with(func(s *Spec) { s.UUID = "" }), ""},
		{"valid rbd", rbdDisk(func(*RBDSource) {}), ""},
		{"valid ovs vlan", nic(NIC{Bridge: "br0", OVS: true, VLAN: 4094}), ""},
		{"empty name", with(func(s *Spec) { s.Name = "" }), "name"},
		{"slash in name", with(func(s *Spec) { s.Name = "a/b" }), "name"},
		{"space in name", with(func(s *Spec) { s.Name = "a b" }), "name"},
		{"long name", with(func(s *Spec) { s.Name = strings.Repeat("a", 64) }), "name"},
		{"bad uuid", with(func(s *Spec) { s.UUID = "not-a-uuid" }), "uuid"},
		{"uuid without dashes", with(func(s *Spec) { s.UUID = "7c9e6679742540de944be07fc1f90ae7" }), "uuid"},
		{"no owner", with(func(s *Spec) { s.Cluster = "" }), "cluster/vmid"},
		{"no vmid", with(func(s *Spec) { s.VMID = "" }), "cluster/vmid"},
		{"bad type", with(func(s *Spec) { s.Type = "xen" }), "type"},
		{"zero memory", with(func(s *Spec) { s.MemoryMiB = 0 }), "memory"},
		{"negative memory", with(func(s *Spec) { s.MemoryMiB = -1 }), "memory"},
		{"zero vcpus", with(func(s *Spec) { s.VCPUs = 0 }), "vcpus"},
		{"initrd without kernel", with(func(s *Spec) { s.Initrd = "/i" }), "kernel"},
		{"bad disk target", with(func(s *Spec) { s.Disks = []Disk{{Target: "disk0", File: "/f"}} }), "disks[0].target"},
		{"duplicate target", with(func(s *Spec) { s.Disks = []Disk{{Target: "vda", File: "/f"}, {Target: "vda", File: "/g"}} }), "disks[1].target"},
		{"bad format", with(func(s *Spec) { s.Disks = []Disk{{Target: "vda", File: "/f", Format: "vmdk"}} }), "disks[0].format"},
		{"no source", with(func(s *Spec) { s.Disks = []Disk{{Target: "vda"}} }), "disks[0]"},
		{"two sources", with(func(s *Spec) { s.Disks = []Disk{{Target: "vda", File: "/f", RBD: &RBDSource{}}} }), "disks[0]"},
		{"rbd no monitors", rbdDisk(func(r *RBDSource) { r.Monitors = nil }), "disks[0].rbd.monitors"},
		{"rbd monitor no port", rbdDisk(func(r *RBDSource) { r.Monitors = []string{"10.0.0.1"} }), "disks[0].rbd.monitors"},
		{"rbd no image", rbdDisk(func(r *RBDSource) { r.Image = "" }), "disks[0].rbd"},
		{"rbd user without secret", rbdDisk(func(r *RBDSource) { r.SecretUUID = "" }), "disks[0].rbd"},
		{"bad mac", nic(NIC{MAC: "52:54:00:00:00", Bridge: "br0"}), "nics[0].mac"},
		{"upper-case mac", nic(NIC{MAC: "52:54:00:AB:00:01", Bridge: "br0"}), "nics[0].mac"},
		{"multicast mac", nic(NIC{MAC: "01:00:5e:00:00:01", Bridge: "br0"}), "nics[0].mac"},
		{"no bridge", nic(NIC{}), "nics[0].bridge"},
		{"vlan on linux bridge", nic(NIC{Bridge: "br0", VLAN: 10}), "nics[0].vlan"},
		{"vlan out of range", nic(NIC{Bridge: "br0", OVS: true, VLAN: 4095}), "nics[0].vlan"},
		{"libvirt tap prefix", nic(NIC{Bridge: "br0", Target: "vnet7"}), "nics[0].target"},
		{"tap name too long", nic(NIC{Bridge: "br0", Target: "tap-name-far-too-long"}), "nics[0].target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DomainXML(tt.spec)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want ValidationError on %s, got %v", tt.field, err)
			}
			if ve.Field != tt.field {
				t.Errorf("error on field %q, want %q (%v)", ve.Field, tt.field, err)
			}
		})
	}
}

func TestMapState(t *testing.T) {
	tests := []struct {
		state  int32
		reason int32
		want   State
		why    string
	}{
		{1, 1, StateRunning, "booted"},
		{1, 2, StateRunning, "migrated"},
		{3, 1, StatePaused, "user"},
		{4, 0, StateShuttingDown, "user"},
		{5, 2, StateStopped, "destroyed"},
		{5, 1, StateStopped, "shutdown"},
		{5, 3, StateCrashed, "crashed"},
		{6, 1, StateCrashed, "panicked"},
		{5, 99, StateStopped, "reason-99"},
		{0, 0, StateUnknown, ""},
	}
	for _, tt := range tests {
		s, r := mapState(libvirtState(tt.state), tt.reason)
		if s != tt.want || r != tt.why {
			t.Errorf("mapState(%d,%d) = %s/%s, want %s/%s", tt.state, tt.reason, s, r, tt.want, tt.why)
		}
	}
}

func libvirtState(s int32) libvirt.DomainState { return libvirt.DomainState(s) }
