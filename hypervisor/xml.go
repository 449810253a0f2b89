package hypervisor

import (
	"encoding/xml"
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// MetadataNamespace identifies corral's ownership element inside a domain's
// <metadata>.
const MetadataNamespace = "https://corral.minet.net/xmlns/domain/1"

// metadataPrefix is the XML prefix libvirt stores the element under.
const metadataPrefix = "corral"

// Firmware holds the OVMF paths used for UEFI domains (Debian 12 "ovmf").
// A variable rather than a constant so another distribution can override it.
var Firmware = struct{ Code, Vars string }{
	Code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
	Vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
}

// ownershipXML is the element written by DomainXML. encoding/xml cannot emit
// a prefixed element from a namespaced name, so the prefix is spelled out;
// libvirt keeps the metadata under that prefix and namespace.
type ownershipXML struct {
	XMLName xml.Name `xml:"corral:instance"`
	NS      string   `xml:"xmlns:corral,attr"`
	Cluster string   `xml:"cluster,attr"`
	VMID    string   `xml:"vm,attr"`
}

// ownership is the same element as parsed back from libvirt. It carries no
// namespace: libvirt's metadata call selects the element by namespace and
// returns it without one.
type ownership struct {
	XMLName xml.Name `xml:"instance"`
	Cluster string   `xml:"cluster,attr"`
	VMID    string   `xml:"vm,attr"`
}

func parseOwnership(doc string) (ownership, error) {
	var o ownership
	if err := xml.Unmarshal([]byte(doc), &o); err != nil {
		return ownership{}, fmt.Errorf("parse corral metadata: %w", err)
	}
	return o, nil
}

// DomainXML renders the spec as libvirt domain XML. It validates the spec
// first and builds the document only from libvirtxml structs, so that
// escaping and element order are libvirt's own.
func DomainXML(s Spec) (string, error) {
	if err := s.Validate(); err != nil {
		return "", err
	}
	d, err := domainDef(s)
	if err != nil {
		return "", err
	}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("marshal domain %s: %w", s.Name, err)
	}
	return out + "\n", nil
}

func domainDef(s Spec) (*libvirtxml.Domain, error) {
	owner, err := xml.Marshal(ownershipXML{NS: MetadataNamespace, Cluster: s.Cluster, VMID: s.VMID})
	if err != nil {
		return nil, fmt.Errorf("marshal metadata: %w", err)
	}
	machine := s.Machine
	if machine == "" {
		machine = DefaultMachine
	}
	vcpus := uint(s.VCPUs)
	d := &libvirtxml.Domain{
		Type:     string(s.Type),
		Name:     s.Name,
		UUID:     s.UUID,
		Metadata: &libvirtxml.DomainMetadata{XML: string(owner)},
		Memory:   &libvirtxml.DomainMemory{Value: uint(s.MemoryMiB), Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Placement: "static", Value: vcpus},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: machine, Type: "hvm"},
			Kernel:  s.Kernel,
			Initrd:  s.Initrd,
			Cmdline: s.Cmdline,
		},
		Features: &libvirtxml.DomainFeatureList{
			// ACPI is what makes Shutdown (the power button) reach the guest.
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
		CPU:        cpuDef(s),
		Clock:      &libvirtxml.DomainClock{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		// A crashed guest stays down: the agent reports it and the HA
		// policy, not libvirt, decides whether to restart it.
		OnCrash: "destroy",
		Devices: &libvirtxml.DomainDeviceList{},
	}
	if s.Kernel == "" {
		d.OS.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "hd"}, {Dev: "network"}}
	}
	if s.UEFI {
		d.OS.Loader = &libvirtxml.DomainLoader{Path: Firmware.Code, Readonly: "yes", Type: "pflash"}
		// libvirt copies the template to its own per-domain path and
		// removes it on Undefine (with the nvram flag).
		d.OS.NVRam = &libvirtxml.DomainNVRam{Template: Firmware.Vars}
	}
	for _, disk := range s.Disks {
		d.Devices.Disks = append(d.Devices.Disks, diskDef(disk))
	}
	for _, nic := range s.NICs {
		d.Devices.Interfaces = append(d.Devices.Interfaces, nicDef(nic))
	}
	port := uint(0)
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}
	if s.SerialLog != "" {
		// append='on': without it the destination QEMU truncates the log
		// during a live migration.
		serial.Log = &libvirtxml.DomainChardevLog{File: s.SerialLog, Append: "on"}
	}
	d.Devices.Serials = []libvirtxml.DomainSerial{serial}
	cport := uint(0)
	d.Devices.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &cport},
	}}
	if s.GuestAgent {
		d.Devices.Channels = []libvirtxml.DomainChannel{{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
			Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: "org.qemu.guest_agent.0"}},
		}}
	}
	if s.VNC {
		d.Devices.Graphics = []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{
			AutoPort:  "yes",
			Listeners: []libvirtxml.DomainGraphicListener{{Address: &libvirtxml.DomainGraphicListenerAddress{Address: "127.0.0.1"}}},
		}}}
	}
	return d, nil
}

func cpuDef(s Spec) *libvirtxml.DomainCPU {
	switch {
	case s.CPUModel != "":
		return &libvirtxml.DomainCPU{
			Mode:  "custom",
			Match: "exact",
			Check: "partial",
			Model: &libvirtxml.DomainCPUModel{Value: s.CPUModel, Fallback: "forbid"},
		}
	case s.Type == TypeKVM:
		return &libvirtxml.DomainCPU{Mode: "host-model", Check: "partial"}
	default:
		// TCG: QEMU's own default model, identical on every host.
		return nil
	}
}

func diskDef(d Disk) libvirtxml.DomainDisk {
	format := d.Format
	if format == "" {
		format = DefaultFormat
	}
	bus := d.Bus
	if bus == "" {
		bus = DefaultDiskBus
	}
	out := libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format, Discard: "unmap"},
		Target: &libvirtxml.DomainDiskTarget{Dev: d.Target, Bus: bus},
	}
	if d.ReadOnly {
		out.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
	}
	if d.File != "" {
		out.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.File}}
		return out
	}
	r := d.RBD
	// librbd has its own cache and is coherent across hosts, which is what
	// lets libvirt treat RBD disks as safe for live migration.
	out.Driver.Cache = "writeback"
	net := &libvirtxml.DomainDiskSourceNetwork{Protocol: "rbd", Name: r.Pool + "/" + r.Image}
	for _, m := range r.Monitors {
		h, p, _ := splitHostPort(m) // validated
		net.Hosts = append(net.Hosts, libvirtxml.DomainDiskSourceHost{Name: strings.Trim(h, "[]"), Port: p})
	}
	if r.User != "" {
		net.Auth = &libvirtxml.DomainDiskAuth{
			Username: r.User,
			Secret:   &libvirtxml.DomainDiskSecret{Type: "ceph", UUID: r.SecretUUID},
		}
	}
	out.Source = &libvirtxml.DomainDiskSource{Network: net}
	return out
}

func nicDef(n NIC) libvirtxml.DomainInterface {
	model := n.Model
	if model == "" {
		model = DefaultNICModel
	}
	out := libvirtxml.DomainInterface{
		MAC:    &libvirtxml.DomainInterfaceMAC{Address: n.MAC},
		Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.Bridge}},
		Model:  &libvirtxml.DomainInterfaceModel{Type: model},
	}
	if n.OVS {
		out.VirtualPort = &libvirtxml.DomainInterfaceVirtualPort{
			Params: &libvirtxml.DomainInterfaceVirtualPortParams{OpenVSwitch: &libvirtxml.DomainInterfaceVirtualPortParamsOpenVSwitch{}},
		}
		if n.VLAN != 0 {
			out.VLan = &libvirtxml.DomainInterfaceVLan{Tags: []libvirtxml.DomainInterfaceVLanTag{{ID: uint(n.VLAN)}}}
		}
	}
	if n.Target != "" {
		out.Target = &libvirtxml.DomainInterfaceTarget{Dev: n.Target}
	}
	return out
}

// interfaceXML renders one NIC as a device document for UpdateNIC.
func interfaceXML(n NIC) (string, error) {
	iface := nicDef(n)
	out, err := iface.Marshal()
	if err != nil {
		return "", fmt.Errorf("marshal interface %s: %w", n.MAC, err)
	}
	return out, nil
}
