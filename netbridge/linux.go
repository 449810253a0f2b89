package netbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds every netlink request: the kernel answers in
// microseconds, so a stuck socket means something is badly wrong.
const netlinkTimeout = 5 * time.Second

// defaultBridgePriority is the kernel's (and RSTP's) default bridge priority.
const defaultBridgePriority = 32768

// linuxBackend drives kernel bridges over netlink in one network namespace.
type linuxBackend struct {
	log *slog.Logger
	h   *netlink.Handle
	// raw is a route socket in the same namespace for what the netlink
	// library does not model: IFLA_BR_STP_STATE and IFLA_BR_PRIORITY.
	raw *nl.SocketHandle
	// writes counts netlink requests that change state; tests read it to
	// show that a converged node costs no writes.
	writes atomic.Int64
}

// linkInfo is one link of the namespace as read by a dump.
type linkInfo struct {
	link netlink.Link
	// For bridges: STP state (0 off) and priority, straight from
	// IFLA_INFO_DATA.
	stp      uint32
	priority uint16
}

func newLinuxBackend(nsPath string, log *slog.Logger) (*linuxBackend, error) {
	var ns netns.NsHandle
	var err error
	if nsPath == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(nsPath)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %q: %w", nsPath, err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink timeout: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink socket in %q: %w", nsPath, err)
	}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	_ = s.SetSendTimeout(&tv)
	_ = s.SetReceiveTimeout(&tv)
	return &linuxBackend{log: log, h: h, raw: &nl.SocketHandle{Socket: s}}, nil
}

func (b *linuxBackend) close() {
	b.h.Close()
	b.raw.Close()
}

func (b *linuxBackend) request(typ, flags int) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{
			Len:   uint32(unix.SizeofNlMsghdr),
			Type:  uint16(typ),
			Flags: unix.NLM_F_REQUEST | uint16(flags),
		},
		Sockets: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: b.raw},
	}
}

// links dumps every link of the namespace once, with bridge STP data.
func (b *linuxBackend) links() (map[string]*linkInfo, error) {
	var msgs [][]byte
	var err error
	for try := 0; try < 5; try++ {
		req := b.request(unix.RTM_GETLINK, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		if !errors.Is(err, nl.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make(map[string]*linkInfo, len(msgs))
	for _, m := range msgs {
		l, err := netlink.LinkDeserialize(nil, m)
		if err != nil {
			return nil, fmt.Errorf("decode link: %w", err)
		}
		li := &linkInfo{link: l}
		if _, ok := l.(*netlink.Bridge); ok {
			li.stp, li.priority = bridgeData(m)
		}
		out[l.Attrs().Name] = li
	}
	return out, nil
}

// bridgeData extracts IFLA_BR_STP_STATE and IFLA_BR_PRIORITY from an
// RTM_NEWLINK message.
func bridgeData(m []byte) (stp uint32, prio uint16) {
	if len(m) < unix.SizeofIfInfomsg {
		return 0, 0
	}
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return 0, 0
	}
	for _, a := range attrs {
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return 0, 0
		}
		for _, i := range infos {
			if i.Attr.Type != nl.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return 0, 0
			}
			for _, d := range data {
				switch d.Attr.Type {
				case nl.IFLA_BR_STP_STATE:
					if len(d.Value) >= 4 {
						stp = nl.NativeEndian().Uint32(d.Value)
					}
				case nl.IFLA_BR_PRIORITY:
					if len(d.Value) >= 2 {
						prio = nl.NativeEndian().Uint16(d.Value)
					}
				}
			}
		}
	}
	return stp, prio
}

// setBridgeSTP writes STP state and priority in one RTM_NEWLINK.
func (b *linuxBackend) setBridgeSTP(index int, stp bool, prio uint16) error {
	b.writes.Add(1)
	req := b.request(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	linkInfo := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	linkInfo.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := linkInfo.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	var st uint32
	if stp {
		st = 1
	}
	data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(st))
	data.AddRtAttr(nl.IFLA_BR_PRIORITY, nl.Uint16Attr(prio))
	req.AddData(linkInfo)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func ownerOf(l netlink.Link) (string, bool) {
	a := l.Attrs().Alias
	if !strings.HasPrefix(a, ownerPrefix) {
		return "", false
	}
	return a[len(ownerPrefix):], true
}

func linkNameByIndex(links map[string]*linkInfo, idx int) string {
	for name, li := range links {
		if li.link.Attrs().Index == idx {
			return name
		}
	}
	return fmt.Sprintf("ifindex %d", idx)
}

// apply converges the linux networks and removes the links netbridge owns
// that no network uses any more. keepOwners lists declared networks that
// failed elsewhere (validation, other backend): their links stay.
func (b *linuxBackend) apply(ctx context.Context, nets []Network, declared, keepOwners map[string]bool) map[string]error {
	res := make(map[string]error, len(nets))
	links, err := b.links()
	if err != nil {
		for _, n := range nets {
			res[n.Name] = err
		}
		return res
	}
	inUse := map[string]bool{}
	for _, n := range nets {
		if err := ctx.Err(); err != nil {
			res[n.Name] = fmt.Errorf("not applied: %w", err)
			continue
		}
		used, err := b.applyOne(n, links)
		res[n.Name] = err
		for _, u := range used {
			inUse[u] = true
		}
	}
	if ctx.Err() != nil {
		return res // do not remove anything on a half-done pass
	}

	// Remove owned links no longer used. A network that failed keeps its
	// links: they are its previous working config.
	var stale []netlink.Link
	for name, li := range links {
		owner, ok := ownerOf(li.link)
		if !ok || inUse[name] || keepOwners[owner] {
			continue
		}
		if declared[owner] && res[owner] != nil {
			continue
		}
		stale = append(stale, li.link)
	}
	for _, l := range stale {
		b.writes.Add(1)
		if err := b.h.LinkDel(l); err != nil && !isNotFound(err) {
			b.log.Warn("remove stale link", "link", l.Attrs().Name, "err", err)
			continue
		}
		b.log.Info("removed link no longer declared", "link", l.Attrs().Name, "alias", l.Attrs().Alias)
	}
	return res
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// applyOne converges one network and returns the names of the links it
// uses (bridge and VLAN device). links is updated with what it creates.
func (b *linuxBackend) applyOne(n Network, links map[string]*linkInfo) ([]string, error) {
	brName := linuxBridgeName(n.Uplink, n.VLAN)
	alias := ownerPrefix + n.Name
	log := b.log.With("network", n.Name, "bridge", brName)

	up, ok := links[n.Uplink]
	if !ok {
		return nil, fmt.Errorf("uplink %s not found on this node", n.Uplink)
	}

	// Refuse foreign objects before creating anything.
	brInfo, brExists := links[brName]
	if brExists {
		if _, isBr := brInfo.link.(*netlink.Bridge); !isBr {
			return nil, fmt.Errorf("%s exists and is a %s, not a bridge: rename it", brName, brInfo.link.Type())
		}
		if _, owned := ownerOf(brInfo.link); !owned {
			return nil, fmt.Errorf("bridge %s exists but was not created by corral (no %q alias): rename it or set its alias to %q", brName, ownerPrefix, alias)
		}
	}
	var port *linkInfo
	vlanName := ""
	if n.VLAN == 0 {
		port = up
	} else {
		vlanName = vlanDevName(n)
		if li, ok := links[vlanName]; ok {
			v, isVlan := li.link.(*netlink.Vlan)
			if !isVlan || v.VlanId != n.VLAN || v.ParentIndex != up.link.Attrs().Index {
				return nil, fmt.Errorf("%s exists but is not VLAN %d on %s: remove it", vlanName, n.VLAN, n.Uplink)
			}
			port = li
		}
	}
	if m := port; m != nil {
		if mi := m.link.Attrs().MasterIndex; mi != 0 && (!brExists || mi != brInfo.link.Attrs().Index) {
			return nil, fmt.Errorf("%s is already a port of %s", m.link.Attrs().Name, linkNameByIndex(links, mi))
		}
	}

	// Uplink: the only foreign link touched, and only to make it usable.
	if n.MTU > 0 && up.link.Attrs().MTU < n.MTU {
		b.writes.Add(1)
		if err := b.h.LinkSetMTU(up.link, n.MTU); err != nil {
			return nil, fmt.Errorf("raise MTU of uplink %s to %d: %w", n.Uplink, n.MTU, err)
		}
		up.link.Attrs().MTU = n.MTU
	}
	if up.link.Attrs().Flags&unix.IFF_UP == 0 {
		b.writes.Add(1)
		if err := b.h.LinkSetUp(up.link); err != nil {
			return nil, fmt.Errorf("set uplink %s up: %w", n.Uplink, err)
		}
		up.link.Attrs().Flags |= unix.IFF_UP
	}

	// VLAN sub-interface.
	if port == nil {
		la := netlink.NewLinkAttrs()
		la.Name = vlanName
		la.ParentIndex = up.link.Attrs().Index
		la.MTU = n.MTU
		b.writes.Add(1)
		if err := b.h.LinkAdd(&netlink.Vlan{LinkAttrs: la, VlanId: n.VLAN}); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return nil, fmt.Errorf("create %s: %w", vlanName, ErrNo8021Q)
			}
			return nil, fmt.Errorf("create VLAN device %s: %w", vlanName, err)
		}
		li, err := b.fetch(vlanName)
		if err != nil {
			return nil, err
		}
		links[vlanName] = li
		port = li
		log.Info("created VLAN device", "link", vlanName)
	}
	if vlanName != "" {
		if _, owned := ownerOf(port.link); owned && port.link.Attrs().Alias != alias {
			if err := b.setAlias(port, alias); err != nil {
				return nil, err
			}
		} else if !owned && port.link.Attrs().Alias == "" && port.link.Attrs().MasterIndex == 0 {
			// Just created by us (or a bare leftover): claim it.
			if err := b.setAlias(port, alias); err != nil {
				return nil, err
			}
		}
		if n.MTU > 0 && port.link.Attrs().MTU != n.MTU {
			b.writes.Add(1)
			if err := b.h.LinkSetMTU(port.link, n.MTU); err != nil {
				return nil, fmt.Errorf("set MTU of %s: %w", vlanName, err)
			}
			port.link.Attrs().MTU = n.MTU
		}
	}

	// Bridge.
	if !brExists {
		la := netlink.NewLinkAttrs()
		la.Name = brName
		b.writes.Add(1)
		if err := b.h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", brName, err)
		}
		li, err := b.fetch(brName)
		if err != nil {
			return nil, err
		}
		links[brName] = li
		brInfo = li
		log.Info("created bridge")
	}
	br := brInfo.link
	if br.Attrs().Alias != alias {
		if err := b.setAlias(brInfo, alias); err != nil {
			return nil, err
		}
	}
	wantPrio := uint16(defaultBridgePriority)
	if n.Priority > 0 {
		wantPrio = uint16(n.Priority)
	}
	if (brInfo.stp != 0) != n.STP || brInfo.priority != wantPrio {
		if err := b.setBridgeSTP(br.Attrs().Index, n.STP, wantPrio); err != nil {
			return nil, fmt.Errorf("set STP=%t priority=%d on %s: %w", n.STP, wantPrio, brName, err)
		}
		brInfo.stp, brInfo.priority = 0, wantPrio
		if n.STP {
			brInfo.stp = 1
		}
		log.Info("set STP", "stp", n.STP, "priority", wantPrio)
	}
	if port.link.Attrs().MasterIndex != br.Attrs().Index {
		b.writes.Add(1)
		if err := b.h.LinkSetMasterByIndex(port.link, br.Attrs().Index); err != nil {
			return nil, fmt.Errorf("add %s to bridge %s: %w", port.link.Attrs().Name, brName, err)
		}
		port.link.Attrs().MasterIndex = br.Attrs().Index
		log.Info("added port", "port", port.link.Attrs().Name)
		// Enslaving lowers the bridge MTU to its smallest port's unless an
		// MTU was set explicitly: read what the kernel chose.
		fresh, err := b.h.LinkByIndex(br.Attrs().Index)
		if err != nil {
			return nil, fmt.Errorf("read bridge %s: %w", brName, err)
		}
		br.Attrs().MTU = fresh.Attrs().MTU
	}
	// Set after enslaving: an explicit MTU sticks (the kernel then stops
	// adjusting it to the ports').
	if n.MTU > 0 && br.Attrs().MTU != n.MTU {
		b.writes.Add(1)
		if err := b.h.LinkSetMTU(br, n.MTU); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", brName, n.MTU, err)
		}
		br.Attrs().MTU = n.MTU
	}
	for _, li := range []*linkInfo{port, brInfo} {
		if li.link.Attrs().Flags&unix.IFF_UP == 0 {
			b.writes.Add(1)
			if err := b.h.LinkSetUp(li.link); err != nil {
				return nil, fmt.Errorf("set %s up: %w", li.link.Attrs().Name, err)
			}
			li.link.Attrs().Flags |= unix.IFF_UP
		}
	}
	used := []string{brName}
	if vlanName != "" {
		used = append(used, vlanName)
	}
	return used, nil
}

func (b *linuxBackend) setAlias(li *linkInfo, alias string) error {
	b.writes.Add(1)
	if err := b.h.LinkSetAlias(li.link, alias); err != nil {
		return fmt.Errorf("set alias of %s: %w", li.link.Attrs().Name, err)
	}
	li.link.Attrs().Alias = alias
	return nil
}

// fetch reads one link after creating it (for its index and defaults).
func (b *linuxBackend) fetch(name string) (*linkInfo, error) {
	l, err := b.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	li := &linkInfo{link: l, priority: defaultBridgePriority}
	return li, nil
}
