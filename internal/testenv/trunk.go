package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// TrunkIfName is the name of the trunk link AddTrunk gives a host.
const TrunkIfName = "trunk0"

// trunkNS names the lab's trunk switch namespace ("<labid>-trunk"): the
// "<labid>-" prefix is enough for Close and the stale sweep to find it.
const trunkNS = "trunk"

// trunkMu serialises the lazy creation of trunk switches (one per lab).
var trunkMu sync.Mutex

// AddTrunk gives host h a second link, "trunk0", plugged into the lab's
// trunk switch: a namespace "<labid>-trunk" holding a plain Linux bridge
// without vlan_filtering, so it forwards 802.1Q-tagged frames between the
// hosts untouched, like a switch port configured as a trunk. The switch is
// created on first use. trunk0 gets no address (bridges of the host use it
// as their uplink); transmit checksum offload is off on both ends, which
// TCP over an OVS netdev datapath needs.
func (l *Lab) AddTrunk(h *Host) (ifname string, err error) {
	if h == nil || h.lab != l {
		return "", errors.New("add trunk: host does not belong to this lab")
	}
	if l.Host(trunkNS) != nil {
		return "", fmt.Errorf("add trunk to %s: a host named %q holds the trunk switch's namespace name", h.Name, trunkNS)
	}
	ctx, cancel := withDefault(context.Background())
	defer cancel()
	sw, err := l.trunkSwitch(ctx)
	if err != nil {
		return "", fmt.Errorf("add trunk to %s: %w", h.Name, err)
	}
	// The switch side is named after the host's port on the main switch,
	// unique in the lab and short enough for IFNAMSIZ.
	port := "t" + h.port
	if err := runCmd(ctx, "ip", "-n", h.NS, "link", "show", TrunkIfName); err == nil {
		return "", fmt.Errorf("add trunk to %s: %s already exists", h.Name, TrunkIfName)
	}
	err = runCmds(ctx, [][]string{
		{"ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", TrunkIfName, "netns", h.NS},
		{"ip", "-n", sw, "link", "set", port, "master", "br0", "up"},
		{"ip", "-n", h.NS, "link", "set", TrunkIfName, "up"},
		{"ip", "netns", "exec", sw, "ethtool", "-K", port, "tx", "off"},
		{"ip", "netns", "exec", h.NS, "ethtool", "-K", TrunkIfName, "tx", "off"},
	})
	if err != nil {
		return "", fmt.Errorf("add trunk to %s: %w", h.Name, err)
	}
	return TrunkIfName, nil
}

// trunkSwitch returns the lab's trunk switch namespace, creating it (and
// its bridge) the first time.
func (l *Lab) trunkSwitch(ctx context.Context) (string, error) {
	trunkMu.Lock()
	defer trunkMu.Unlock()
	sw := l.ns(trunkNS)
	if _, err := os.Stat(filepath.Join("/run/netns", sw)); err == nil {
		return sw, nil
	}
	// Recorded before creation, as for hosts: an owner dying right after
	// `ip netns add` leaves nothing the sweep cannot find.
	if err := l.recordNetns(sw); err != nil {
		return "", err
	}
	err := runCmds(ctx, [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		// vlan_filtering stays 0 (the default, and the kernel here lacks
		// it anyway): tagged frames are forwarded as they come.
		{"ip", "-n", sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br0", "up"},
	})
	if err != nil {
		return "", fmt.Errorf("create trunk switch: %w", err)
	}
	return sw, nil
}
