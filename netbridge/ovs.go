package netbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-logr/logr"
	"github.com/ovn-org/libovsdb/cache"
	"github.com/ovn-org/libovsdb/client"
	"github.com/ovn-org/libovsdb/model"
	"github.com/ovn-org/libovsdb/ovsdb"
)

// Defaults of the OVS backend.
const (
	// ovsTimeout bounds one OVS pass of Apply (transactions and the wait
	// for ovs-vswitchd to take the change).
	ovsTimeout = 15 * time.Second
	// ovsConnectTimeout bounds the first connection to ovsdb-server.
	ovsConnectTimeout = 10 * time.Second
	// cfgRecheck re-reads cur_cfg when no cache event came (lost event).
	cfgRecheck = 200 * time.Millisecond
	// ovsOwnerSep separates network names in a shared bridge's owner value.
	ovsOwnerSep = ","
)

// ErrUnknownNetwork is returned by AttachPort when no applied network uses
// the given bridge and VLAN.
var ErrUnknownNetwork = errors.New("no applied network on this bridge and VLAN")

// ErrNotOwned is returned when an OVS object exists but netbridge did not
// create it, so it will not change or remove it.
var ErrNotOwned = errors.New("not created by corral")

// ovsBackend drives one ovsdb-server over its unix socket.
type ovsBackend struct {
	log      *slog.Logger
	cli      client.Client
	datapath string
	// lb checks that uplinks exist: ovs-vswitchd runs in the same
	// namespace as the links netbridge manages.
	lb *linuxBackend
	// cfgChanged is poked on every Open_vSwitch row update, to wait for
	// ovs-vswitchd's cur_cfg without polling.
	cfgChanged chan struct{}
	// transactions counts write transactions (tests: no-op re-apply).
	transactions int
	seq          int
}

func newOVSBackend(sock, datapath string, lb *linuxBackend, log *slog.Logger) (*ovsBackend, error) {
	dbModel, err := ovsDBModel()
	if err != nil {
		return nil, fmt.Errorf("OVSDB model: %w", err)
	}
	endpoint := sock
	if !strings.HasPrefix(sock, "unix:") {
		endpoint = "unix:" + sock
	}
	// libovsdb logs through logr; route it to slog, where its debug chatter
	// (V levels) falls below Info.
	lg := logr.FromSlogHandler(log.With("component", "libovsdb").Handler())
	cli, err := client.NewOVSDBClient(dbModel, client.WithEndpoint(endpoint), client.WithLogger(&lg),
		// ovsdb-server restarts (upgrades, crashes) must not need a corrald
		// restart: reconnect forever; transactions wait, bounded by their
		// context.
		client.WithReconnect(ovsConnectTimeout, &backoff.ExponentialBackOff{
			InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2,
			MaxInterval: 5 * time.Second, MaxElapsedTime: 0, Stop: backoff.Stop, Clock: backoff.SystemClock,
		}))
	if err != nil {
		return nil, fmt.Errorf("OVSDB client for %s: %w", sock, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ovsConnectTimeout)
	defer cancel()
	if err := cli.Connect(ctx); err != nil {
		return nil, fmt.Errorf("connect to OVSDB at %s (is ovsdb-server running?): %w", sock, err)
	}
	b := &ovsBackend{log: log, cli: cli, datapath: datapath, lb: lb,
		cfgChanged: make(chan struct{}, 1)}
	cli.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		UpdateFunc: func(table string, _, _ model.Model) {
			if table == ovsTableRoot {
				select {
				case b.cfgChanged <- struct{}{}:
				default:
				}
			}
		},
	})
	// Monitor only the modelled columns: an update of any other column
	// would not fit the model and stall the cache.
	r, br, p, i := &ovsRoot{}, &ovsBridge{}, &ovsPort{}, &ovsInterface{}
	mon := cli.NewMonitor(
		client.WithTable(r, &r.Bridges, &r.NextCfg, &r.CurCfg, &r.ExternalIDs),
		client.WithTable(br, &br.Name, &br.Ports, &br.DatapathType, &br.RSTPEnable, &br.STPEnable, &br.OtherConfig, &br.ExternalIDs),
		client.WithTable(p, &p.Name, &p.Interfaces, &p.Tag, &p.Trunks, &p.VLANMode, &p.ExternalIDs),
		client.WithTable(i, &i.Name, &i.Type, &i.MTURequest, &i.Error, &i.OFPort, &i.ExternalIDs),
	)
	if _, err := cli.Monitor(ctx, mon); err != nil {
		cli.Close()
		return nil, fmt.Errorf("monitor OVSDB at %s: %w", sock, err)
	}
	return b, nil
}

func (b *ovsBackend) close() { b.cli.Close() }

// snapshot is the part of the OVSDB cache netbridge looks at.
type snapshot struct {
	root        ovsRoot
	bridges     map[string]*ovsBridge // by name
	bridgeByID  map[string]*ovsBridge
	ports       map[string]*ovsPort // by UUID
	portsByName map[string]*ovsPort
	portBridge  map[string]*ovsBridge    // port UUID -> bridge holding it
	ifaces      map[string]*ovsInterface // by UUID
}

func (b *ovsBackend) snapshot(ctx context.Context) (*snapshot, error) {
	var roots []ovsRoot
	var brs []ovsBridge
	var ports []ovsPort
	var ifs []ovsInterface
	for _, l := range []any{&roots, &brs, &ports, &ifs} {
		if err := b.cli.List(ctx, l); err != nil {
			return nil, fmt.Errorf("read OVSDB cache: %w", err)
		}
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("OVSDB has %d Open_vSwitch rows, want 1 (run ovs-vsctl init)", len(roots))
	}
	s := &snapshot{root: roots[0], bridges: map[string]*ovsBridge{}, bridgeByID: map[string]*ovsBridge{},
		ports: map[string]*ovsPort{}, portsByName: map[string]*ovsPort{}, portBridge: map[string]*ovsBridge{},
		ifaces: map[string]*ovsInterface{}}
	for i := range brs {
		br := &brs[i]
		s.bridges[br.Name] = br
		s.bridgeByID[br.UUID] = br
		for _, p := range br.Ports {
			s.portBridge[p] = br
		}
	}
	for i := range ports {
		s.ports[ports[i].UUID] = &ports[i]
		s.portsByName[ports[i].Name] = &ports[i]
	}
	for i := range ifs {
		s.ifaces[ifs[i].UUID] = &ifs[i]
	}
	return s, nil
}

func ovsOwned(ext map[string]string) bool {
	_, ok := ext[ovsOwnerKey]
	return ok
}

func ovsOwners(ext map[string]string) []string {
	v, ok := ext[ovsOwnerKey]
	if !ok || v == "" {
		return nil
	}
	return strings.Split(v, ovsOwnerSep)
}

// txn collects the operations of one OVSDB transaction.
type txn struct {
	b   *ovsBackend
	ops []ovsdb.Operation
	err error
}

func (t *txn) add(ops []ovsdb.Operation, err error) {
	if err != nil && t.err == nil {
		t.err = err
	}
	t.ops = append(t.ops, ops...)
}

// named returns a fresh named UUID (an identifier, as RFC 7047 wants).
func (b *ovsBackend) named(prefix string) string {
	b.seq++
	return fmt.Sprintf("nb_%s%d", prefix, b.seq)
}

// commit runs the transaction, then waits until ovs-vswitchd has taken it
// (cur_cfg reaches the next_cfg the transaction set), as ovs-vsctl does.
func (b *ovsBackend) commit(ctx context.Context, t *txn) error {
	if t.err != nil {
		return fmt.Errorf("build OVSDB transaction: %w", t.err)
	}
	if len(t.ops) == 0 {
		return nil
	}
	root := &ovsRoot{UUID: t.rootUUID(ctx)}
	mut, err := b.cli.Where(root).Mutate(root, model.Mutation{Field: &root.NextCfg, Mutator: ovsdb.MutateOperationAdd, Value: 1})
	if err != nil {
		return fmt.Errorf("build next_cfg mutation: %w", err)
	}
	ops := append(t.ops, mut...)
	ops = append(ops, ovsdb.Operation{
		Op:      ovsdb.OperationSelect,
		Table:   ovsTableRoot,
		Where:   []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: root.UUID}}},
		Columns: []string{"next_cfg"},
	})
	b.transactions++
	reply, err := b.cli.Transact(ctx, ops...)
	if err != nil {
		return fmt.Errorf("OVSDB transaction: %w", err)
	}
	if _, err := ovsdb.CheckOperationResults(reply, ops); err != nil {
		return fmt.Errorf("OVSDB transaction: %w", err)
	}
	last := reply[len(ops)-1]
	if len(last.Rows) != 1 {
		return fmt.Errorf("OVSDB transaction: next_cfg not returned")
	}
	want, ok := toInt(last.Rows[0]["next_cfg"])
	if !ok {
		return fmt.Errorf("OVSDB transaction: next_cfg is %T", last.Rows[0]["next_cfg"])
	}
	return b.waitCurCfg(ctx, want)
}

func (t *txn) rootUUID(ctx context.Context) string {
	var roots []ovsRoot
	if err := t.b.cli.List(ctx, &roots); err != nil || len(roots) == 0 {
		return ""
	}
	return roots[0].UUID
}

func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case int:
		return x, true
	case int64:
		return int(x), true
	case float64:
		return int(x), true
	}
	return 0, false
}

func (b *ovsBackend) waitCurCfg(ctx context.Context, want int) error {
	for {
		var roots []ovsRoot
		if err := b.cli.List(ctx, &roots); err == nil && len(roots) == 1 && roots[0].CurCfg >= want {
			return nil
		}
		select {
		case <-b.cfgChanged:
		case <-time.After(cfgRecheck):
			// libovsdb may drop events when its queue is full; look again.
		case <-ctx.Done():
			return fmt.Errorf("ovs-vswitchd did not take the change (next_cfg %d) in time, is it running? %w", want, ctx.Err())
		}
	}
}

// apply converges the ovs networks: one bridge per uplink. keep lists
// declared networks that failed elsewhere; lastGood gives their previous
// config, which stays in place.
func (b *ovsBackend) apply(ctx context.Context, nets []Network, declared, keep map[string]bool, lastGood map[string]Network) map[string]error {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	res := make(map[string]error, len(nets))
	failAll := func(group []Network, err error) {
		for _, n := range group {
			res[n.Name] = err
		}
	}
	groups := map[string][]Network{}
	for _, n := range nets {
		groups[n.Uplink] = append(groups[n.Uplink], n)
	}
	// Networks that failed keep their last applied place on their bridge.
	retained := map[string][]Network{}
	for name := range keep {
		if g, ok := lastGood[name]; ok && kindOf(g) == KindOVS {
			retained[g.Uplink] = append(retained[g.Uplink], g)
		}
	}
	s, err := b.snapshot(ctx)
	if err != nil {
		failAll(nets, err)
		return res
	}
	links, err := b.lb.links()
	if err != nil {
		failAll(nets, err)
		return res
	}
	uplinks := make([]string, 0, len(groups))
	for u := range groups {
		uplinks = append(uplinks, u)
	}
	sort.Strings(uplinks)
	for _, u := range uplinks {
		g := groups[u]
		if err := ctx.Err(); err != nil {
			failAll(g, fmt.Errorf("not applied: %w", err))
			continue
		}
		if _, ok := links[u]; !ok {
			failAll(g, fmt.Errorf("uplink %s not found on this node", u))
			continue
		}
		if err := b.applyBridge(ctx, s, u, g, retained[u]); err != nil {
			failAll(g, err)
			continue
		}
		for _, n := range g {
			res[n.Name] = nil
		}
	}
	if ctx.Err() != nil {
		return res
	}

	// Bridges no declared network uses any more.
	if s, err = b.snapshot(ctx); err != nil {
		b.log.Warn("OVS cleanup skipped", "err", err)
		return res
	}
	t := &txn{b: b}
	for brName, br := range s.bridges {
		if !ovsOwned(br.ExternalIDs) {
			continue
		}
		if b.bridgeInUse(brName, groups, retained) {
			continue
		}
		b.removeBridge(t, s, br)
	}
	if err := b.commit(ctx, t); err != nil {
		b.log.Warn("OVS cleanup failed", "err", err)
	}
	return res
}

// bridgeInUse tells whether a declared or retained network maps to brName.
func (b *ovsBackend) bridgeInUse(brName string, groups, retained map[string][]Network) bool {
	for u := range groups {
		if ovsBridgeName(u) == brName {
			return true
		}
	}
	for u := range retained {
		if ovsBridgeName(u) == brName {
			return true
		}
	}
	return false
}

// removeBridge deletes an owned bridge, unless ports netbridge did not
// create are still on it (a VM's tap added by libvirt): then only the
// owned VM ports go and the bridge waits for a later pass.
func (b *ovsBackend) removeBridge(t *txn, s *snapshot, br *ovsBridge) {
	var foreign []string
	var ownedVM []string
	for _, pid := range br.Ports {
		p := s.ports[pid]
		if p == nil {
			continue
		}
		switch {
		case p.Name == br.Name: // the bridge's internal port
		case ovsOwned(p.ExternalIDs) && p.ExternalIDs[ovsRoleKey] == ovsRoleUplink:
		case ovsOwned(p.ExternalIDs):
			ownedVM = append(ownedVM, pid)
		default:
			foreign = append(foreign, p.Name)
		}
	}
	if len(foreign) > 0 {
		b.log.Warn("OVS bridge no longer declared but still has ports corral did not create; keeping it",
			"bridge", br.Name, "ports", foreign)
		if len(ownedVM) > 0 {
			m := &ovsBridge{UUID: br.UUID}
			t.add(b.cli.Where(m).Mutate(m, model.Mutation{Field: &m.Ports, Mutator: ovsdb.MutateOperationDelete, Value: ownedVM}))
		}
		return
	}
	m := &ovsBridge{UUID: br.UUID}
	t.add(b.cli.Where(m).Delete())
	root := &ovsRoot{UUID: s.root.UUID}
	t.add(b.cli.Where(root).Mutate(root, model.Mutation{Field: &root.Bridges, Mutator: ovsdb.MutateOperationDelete, Value: []string{br.UUID}}))
	b.log.Info("removing OVS bridge no longer declared", "bridge", br.Name)
}

// Roles of owned ports, in external_ids.
const (
	ovsRoleKey    = "corral-role"
	ovsRoleUplink = "uplink"
	ovsRoleVM     = "vm"
)

// applyBridge converges the bridge of one uplink for the networks g (all
// valid, same STP settings) plus retained ones (failed, kept as they were).
func (b *ovsBackend) applyBridge(ctx context.Context, s *snapshot, uplink string, g, retained []Network) error {
	brName := ovsBridgeName(uplink)
	all := append(append([]Network{}, g...), retained...)
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	names := make([]string, 0, len(all))
	vlanSet := map[int]bool{}
	byName := map[string]Network{}
	maxMTU := 0
	for _, n := range all {
		names = append(names, n.Name)
		vlanSet[n.VLAN] = true
		byName[n.Name] = n
		if n.MTU > maxMTU {
			maxMTU = n.MTU
		}
	}
	owner := strings.Join(names, ovsOwnerSep)
	trunks := make([]int, 0, len(vlanSet))
	for v := range vlanSet {
		trunks = append(trunks, v)
	}
	sort.Ints(trunks)
	stp, prio := g[0].STP, g[0].Priority
	log := b.log.With("bridge", brName, "uplink", uplink)

	br, exists := s.bridges[brName]
	if exists && !ovsOwned(br.ExternalIDs) {
		return fmt.Errorf("OVS bridge %s exists but has no external_ids:%s: %w; rename it or mark it", brName, ovsOwnerKey, ErrNotOwned)
	}
	upPort, upExists := s.portsByName[uplink]
	if upExists {
		if holder := s.portBridge[upPort.UUID]; holder != nil && holder.Name != brName {
			return fmt.Errorf("uplink %s is already a port of OVS bridge %s", uplink, holder.Name)
		}
	}

	t := &txn{b: b}
	trunkMode := "trunk"
	var mtuReq *int
	if maxMTU > 0 {
		mtuReq = &maxMTU
	}
	wantOther := map[string]string{}
	if br != nil {
		for k, v := range br.OtherConfig {
			wantOther[k] = v
		}
	}
	delete(wantOther, "rstp-priority")
	if stp && prio > 0 {
		wantOther["rstp-priority"] = strconv.Itoa(prio)
	}
	wantExt := map[string]string{}
	if br != nil {
		for k, v := range br.ExternalIDs {
			wantExt[k] = v
		}
	}
	wantExt[ovsOwnerKey] = owner

	if !exists {
		intIf := &ovsInterface{UUID: b.named("if"), Name: brName, Type: "internal"}
		intPort := &ovsPort{UUID: b.named("p"), Name: brName, Interfaces: []string{intIf.UUID}}
		upIf := &ovsInterface{UUID: b.named("if"), Name: uplink, MTURequest: mtuReq,
			ExternalIDs: map[string]string{ovsOwnerKey: owner, ovsRoleKey: ovsRoleUplink}}
		up := &ovsPort{UUID: b.named("p"), Name: uplink, Interfaces: []string{upIf.UUID},
			Trunks: trunks, VLANMode: &trunkMode,
			ExternalIDs: map[string]string{ovsOwnerKey: owner, ovsRoleKey: ovsRoleUplink}}
		nbr := &ovsBridge{UUID: b.named("br"), Name: brName, Ports: []string{intPort.UUID, up.UUID},
			DatapathType: b.datapath, RSTPEnable: stp, OtherConfig: wantOther, ExternalIDs: wantExt}
		t.add(b.cli.Create(intIf, intPort, upIf, up, nbr))
		root := &ovsRoot{UUID: s.root.UUID}
		t.add(b.cli.Where(root).Mutate(root, model.Mutation{Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{nbr.UUID}}))
		log.Info("creating OVS bridge", "networks", owner, "trunks", trunks)
	} else {
		m := &ovsBridge{UUID: br.UUID, DatapathType: b.datapath, RSTPEnable: stp, OtherConfig: wantOther, ExternalIDs: wantExt}
		var fields []any
		if br.DatapathType != b.datapath {
			fields = append(fields, &m.DatapathType)
		}
		if br.RSTPEnable != stp {
			fields = append(fields, &m.RSTPEnable)
		}
		if !mapsEqual(br.OtherConfig, wantOther) {
			fields = append(fields, &m.OtherConfig)
		}
		if !mapsEqual(br.ExternalIDs, wantExt) {
			fields = append(fields, &m.ExternalIDs)
		}
		if len(fields) > 0 {
			t.add(b.cli.Where(m).Update(m, fields...))
			log.Info("updating OVS bridge", "networks", owner, "rstp", stp, "priority", prio)
		}
		b.convergeUplink(t, s, br, uplink, upPort, owner, trunks, mtuReq)
		b.convergeVMPorts(t, s, br, byName)
	}
	if err := b.commit(ctx, t); err != nil {
		return fmt.Errorf("configure OVS bridge %s: %w", brName, err)
	}
	// ovs-vswitchd reports an unusable uplink in Interface.error.
	if s2, err := b.snapshot(ctx); err == nil {
		if p := s2.portsByName[uplink]; p != nil {
			for _, ifID := range p.Interfaces {
				if i := s2.ifaces[ifID]; i != nil && i.Error != nil && *i.Error != "" {
					return fmt.Errorf("uplink %s on OVS bridge %s: %s", uplink, brName, *i.Error)
				}
			}
		}
	}
	return nil
}

func (b *ovsBackend) convergeUplink(t *txn, s *snapshot, br *ovsBridge, uplink string, upPort *ovsPort, owner string, trunks []int, mtuReq *int) {
	trunkMode := "trunk"
	ext := map[string]string{ovsOwnerKey: owner, ovsRoleKey: ovsRoleUplink}
	if upPort == nil {
		upIf := &ovsInterface{UUID: b.named("if"), Name: uplink, MTURequest: mtuReq, ExternalIDs: ext}
		up := &ovsPort{UUID: b.named("p"), Name: uplink, Interfaces: []string{upIf.UUID},
			Trunks: trunks, VLANMode: &trunkMode, ExternalIDs: ext}
		t.add(b.cli.Create(upIf, up))
		m := &ovsBridge{UUID: br.UUID}
		t.add(b.cli.Where(m).Mutate(m, model.Mutation{Field: &m.Ports, Mutator: ovsdb.MutateOperationInsert, Value: []string{up.UUID}}))
		return
	}
	wantExt := map[string]string{}
	for k, v := range upPort.ExternalIDs {
		wantExt[k] = v
	}
	for k, v := range ext {
		wantExt[k] = v
	}
	m := &ovsPort{UUID: upPort.UUID, Trunks: trunks, VLANMode: &trunkMode, ExternalIDs: wantExt}
	var fields []any
	if !intsEqual(upPort.Trunks, trunks) {
		fields = append(fields, &m.Trunks)
	}
	if upPort.VLANMode == nil || *upPort.VLANMode != trunkMode {
		fields = append(fields, &m.VLANMode)
	}
	if upPort.Tag != nil {
		fields = append(fields, &m.Tag) // nil: a trunk has no access tag
	}
	if !mapsEqual(upPort.ExternalIDs, wantExt) {
		fields = append(fields, &m.ExternalIDs)
	}
	if len(fields) > 0 {
		t.add(b.cli.Where(m).Update(m, fields...))
	}
	for _, ifID := range upPort.Interfaces {
		i := s.ifaces[ifID]
		if i == nil || i.Name != uplink || intPtrEqual(i.MTURequest, mtuReq) {
			continue
		}
		mi := &ovsInterface{UUID: i.UUID, MTURequest: mtuReq}
		t.add(b.cli.Where(mi).Update(mi, &mi.MTURequest))
	}
}

// convergeVMPorts fixes the tags of the ports AttachPort created and
// removes those whose network is gone. Ports others created are left alone.
func (b *ovsBackend) convergeVMPorts(t *txn, s *snapshot, br *ovsBridge, byName map[string]Network) {
	var gone []string
	for _, pid := range br.Ports {
		p := s.ports[pid]
		if p == nil || !ovsOwned(p.ExternalIDs) || p.ExternalIDs[ovsRoleKey] != ovsRoleVM {
			continue
		}
		n, ok := byName[p.ExternalIDs[ovsOwnerKey]]
		if !ok {
			gone = append(gone, pid)
			b.log.Info("removing OVS port of a network no longer declared", "bridge", br.Name, "port", p.Name, "network", p.ExternalIDs[ovsOwnerKey])
			continue
		}
		if p.Tag == nil || *p.Tag != n.VLAN {
			tag := n.VLAN
			m := &ovsPort{UUID: p.UUID, Tag: &tag}
			t.add(b.cli.Where(m).Update(m, &m.Tag))
		}
	}
	if len(gone) > 0 {
		m := &ovsBridge{UUID: br.UUID}
		t.add(b.cli.Where(m).Mutate(m, model.Mutation{Field: &m.Ports, Mutator: ovsdb.MutateOperationDelete, Value: gone}))
	}
}

// attachPort adds (or fixes) an access port for network n on its bridge.
func (b *ovsBackend) attachPort(ctx context.Context, n Network, port string) error {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	s, err := b.snapshot(ctx)
	if err != nil {
		return err
	}
	brName := ovsBridgeName(n.Uplink)
	br, ok := s.bridges[brName]
	if !ok || !ovsOwned(br.ExternalIDs) {
		return fmt.Errorf("attach %s: OVS bridge %s not configured by corral", port, brName)
	}
	ext := map[string]string{ovsOwnerKey: n.Name, ovsRoleKey: ovsRoleVM}
	tag := n.VLAN
	access := "access"
	var mtuReq *int
	if n.MTU > 0 {
		mtu := n.MTU
		mtuReq = &mtu
	}
	t := &txn{b: b}
	if p, exists := s.portsByName[port]; exists {
		if !ovsOwned(p.ExternalIDs) {
			return fmt.Errorf("attach %s: port exists: %w", port, ErrNotOwned)
		}
		if holder := s.portBridge[p.UUID]; holder == nil || holder.UUID != br.UUID {
			return fmt.Errorf("attach %s: port is on another bridge; detach it first", port)
		}
		m := &ovsPort{UUID: p.UUID, Tag: &tag, VLANMode: &access, ExternalIDs: ext}
		var fields []any
		if p.Tag == nil || *p.Tag != tag {
			fields = append(fields, &m.Tag)
		}
		if p.VLANMode == nil || *p.VLANMode != access {
			fields = append(fields, &m.VLANMode)
		}
		if !mapsEqual(p.ExternalIDs, ext) {
			fields = append(fields, &m.ExternalIDs)
		}
		if len(fields) > 0 {
			t.add(b.cli.Where(m).Update(m, fields...))
		}
	} else {
		i := &ovsInterface{UUID: b.named("if"), Name: port, MTURequest: mtuReq, ExternalIDs: ext}
		p := &ovsPort{UUID: b.named("p"), Name: port, Interfaces: []string{i.UUID}, Tag: &tag, VLANMode: &access, ExternalIDs: ext}
		t.add(b.cli.Create(i, p))
		m := &ovsBridge{UUID: br.UUID}
		t.add(b.cli.Where(m).Mutate(m, model.Mutation{Field: &m.Ports, Mutator: ovsdb.MutateOperationInsert, Value: []string{p.UUID}}))
	}
	if err := b.commit(ctx, t); err != nil {
		return fmt.Errorf("attach %s to %s: %w", port, brName, err)
	}
	return nil
}

func (b *ovsBackend) detachPort(ctx context.Context, bridge, port string) error {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	s, err := b.snapshot(ctx)
	if err != nil {
		return err
	}
	p, ok := s.portsByName[port]
	if !ok {
		return nil
	}
	if !ovsOwned(p.ExternalIDs) || p.ExternalIDs[ovsRoleKey] != ovsRoleVM {
		return fmt.Errorf("detach %s: %w", port, ErrNotOwned)
	}
	br := s.portBridge[p.UUID]
	if br == nil {
		return nil
	}
	if br.Name != bridge {
		return fmt.Errorf("detach %s: port is on bridge %s, not %s", port, br.Name, bridge)
	}
	t := &txn{b: b}
	m := &ovsBridge{UUID: br.UUID}
	t.add(b.cli.Where(m).Mutate(m, model.Mutation{Field: &m.Ports, Mutator: ovsdb.MutateOperationDelete, Value: []string{p.UUID}}))
	if err := b.commit(ctx, t); err != nil {
		return fmt.Errorf("detach %s from %s: %w", port, bridge, err)
	}
	return nil
}

// AttachPort adds port (a VM's tap, or any existing interface) to bridge as
// an access port on VLAN vlan, owned by netbridge. Use it only when libvirt
// cannot plug the tap itself: libvirt's <virtualport type='openvswitch'/>
// runs ovs-vsctl, which finds ovsdb-server through OVS_RUNDIR (socket
// $OVS_RUNDIR/db.sock); start libvirtd with OVS_RUNDIR set to the directory
// holding the node's db.sock.
func (c *Converger) AttachPort(ctx context.Context, bridge, port string, vlan int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ovs == nil {
		return ErrOVSUnsupported
	}
	if port == "" || len(port) > maxIfNameLen || !ifNameRe.MatchString(port) {
		return fmt.Errorf("attach: %q is not a valid interface name", port)
	}
	// lastGood holds what is applied: attach only to a working network.
	names := make([]string, 0, len(c.lastGood))
	for name, n := range c.lastGood {
		if kindOf(n) == KindOVS {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		n := c.lastGood[name]
		if ovsBridgeName(n.Uplink) == bridge && n.VLAN == vlan {
			return c.ovs.attachPort(ctx, n, port)
		}
	}
	return fmt.Errorf("attach %s: bridge %s VLAN %d: %w", port, bridge, vlan, ErrUnknownNetwork)
}

// DetachPort removes a port AttachPort added. A port netbridge did not
// create is refused with ErrNotOwned; a missing port is not an error.
func (c *Converger) DetachPort(ctx context.Context, bridge, port string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ovs == nil {
		return ErrOVSUnsupported
	}
	return c.ovs.detachPort(ctx, bridge, port)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func intsEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	a2 := append([]int{}, a...)
	sort.Ints(a2)
	for i := range a2 {
		if a2[i] != b[i] {
			return false
		}
	}
	return true
}

func intPtrEqual(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
