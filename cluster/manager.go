// Package cluster holds a daemon's memberships: one Raft group per cluster
// (prod, dev…), each with its own data directory, certificates, seal key and
// state. It bootstraps clusters, admits nodes with single-use join tokens,
// forwards commands to the leader and keeps heartbeats flowing to it.
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
)

// Defaults of a Manager.
const (
	DefaultRaftPortBase   = 7100
	DefaultCertTTL        = 5 * 365 * 24 * time.Hour
	DefaultAdminCertTTL   = 365 * 24 * time.Hour
	DefaultTokenTTL       = time.Hour
	DefaultHeartbeatEvery = 500 * time.Millisecond
	DefaultRPCTimeout     = 5 * time.Second
)

// Config configures a Manager.
type Config struct {
	NodeName     string
	DataDir      string
	AdvertiseIP  string // the IP peers and Ceph see for this node
	APIAddr      string // host:port of this node's gRPC API
	RaftPortBase int
	Logger       *slog.Logger // carries the node key (corrald adds it once)
	// Raft timing overrides (zero = raftstore defaults).
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	// Observe receives Raft commit/apply latencies (metrics); may be nil.
	Observe raftstore.Observer
	// Dialer, when set, is used for every outgoing gRPC connection.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

// Group is this node's membership of one cluster.
type Group struct {
	Name    string
	Role    pb.NodeRole
	Store   *raftstore.Store
	Creds   pki.Creds
	SealKey []byte
	dir     string

	hbMu           sync.Mutex
	heartbeats     map[string]time.Time // leader only: last heartbeat per node
	leaderAt       time.Time            // when this node last became leader
	fencedByLeader bool
	prunedAt       time.Time // owned by Run
	// As a follower: the leader and when it last contacted this node
	// (Raft's own last contact), kept at each tick. On becoming leader
	// they say since when the previous leader has been silent.
	followedLeader    string
	followedContact   time.Time
	prevLeader        string
	prevLeaderContact time.Time
}

// member is the small file that says how to reopen a group at start.
type member struct {
	Role     string `json:"role"`
	RaftAddr string `json:"raft_addr"`
}

// Manager holds every group of this daemon.
type Manager struct {
	cfg Config
	log *slog.Logger
	tls *pki.ServerTLS

	mu     sync.RWMutex
	groups map[string]*Group

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn // key: cluster|addr
}

// New returns a Manager; call Restore to reopen existing memberships.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RaftPortBase == 0 {
		cfg.RaftPortBase = DefaultRaftPortBase
	}
	return &Manager{
		cfg: cfg, log: cfg.Logger, tls: pki.NewServerTLS(),
		groups: map[string]*Group{}, conns: map[string]*grpc.ClientConn{},
	}
}

// NodeName is this daemon's node name.
func (m *Manager) NodeName() string { return m.cfg.NodeName }

// AdvertiseIP is the IP this node is reached at.
func (m *Manager) AdvertiseIP() string { return m.cfg.AdvertiseIP }

// ServerTLS is the TLS config for the API listener.
func (m *Manager) ServerTLS() *tls.Config { return m.tls.Config() }

func (m *Manager) groupDir(name string) string { return filepath.Join(m.cfg.DataDir, "clusters", name) }

// Group returns the membership of cluster name.
func (m *Manager) Group(name string) (*Group, error) {
	m.mu.RLock()
	g, ok := m.groups[name]
	m.mu.RUnlock()
	if !ok {
		return nil, errdefs.NotFound("this node (%s) is not a member of cluster %q: check --cluster or the context", m.cfg.NodeName, name)
	}
	return g, nil
}

// Groups returns every membership, by name.
func (m *Manager) Groups() []*Group {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*Group, 0, len(m.groups))
	for _, g := range m.groups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Restore reopens every membership found in the data directory; a node
// restarted from its data directory rejoins its clusters by itself.
func (m *Manager) Restore() error {
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "clusters"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read memberships: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := m.groupDir(e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "member.json"))
		if err != nil {
			m.log.Warn("skipping incomplete membership", "cluster", e.Name(), "err", err)
			continue
		}
		var mem member
		if err := json.Unmarshal(b, &mem); err != nil {
			return fmt.Errorf("membership %s: %w", e.Name(), err)
		}
		creds, err := pki.LoadCreds(filepath.Join(dir, "creds"))
		if err != nil {
			return fmt.Errorf("membership %s: %w", e.Name(), err)
		}
		seal, err := os.ReadFile(filepath.Join(dir, "seal.key"))
		if err != nil {
			return fmt.Errorf("membership %s: %w", e.Name(), err)
		}
		if _, err := m.open(e.Name(), roleOf(mem.Role), mem.RaftAddr, creds, seal, false); err != nil {
			return err
		}
	}
	return nil
}

func roleOf(s string) pb.NodeRole {
	if s == "witness" {
		return pb.NodeRole_NODE_ROLE_WITNESS
	}
	return pb.NodeRole_NODE_ROLE_VOTER
}

func roleString(r pb.NodeRole) string {
	if r == pb.NodeRole_NODE_ROLE_WITNESS {
		return "witness"
	}
	return "voter"
}

// raftTLS returns the server and client TLS configs of a group's Raft
// transport: only nodes of this cluster may connect.
func raftTLS(creds pki.Creds) (*tls.Config, *tls.Config, error) {
	st := pki.NewServerTLS()
	if err := st.Set(creds); err != nil {
		return nil, nil, err
	}
	base := st.Config()
	cluster := creds.Cluster
	server := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := base.GetConfigForClient(hello)
			if err != nil || c == nil {
				return c, err
			}
			c = c.Clone()
			c.ClientAuth = tls.RequireAndVerifyClientCert
			prev := c.VerifyConnection
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if prev != nil {
					if err := prev(cs); err != nil {
						return err
					}
				}
				id, ok := pki.VerifiedIdentity(cs, cluster)
				if !ok || id.Role != pki.RoleNode {
					return fmt.Errorf("raft transport of %s accepts only its nodes", cluster)
				}
				return nil
			}
			return c, nil
		},
	}
	return server, pki.ClientTLS(creds, cluster), nil
}

func (m *Manager) open(name string, role pb.NodeRole, raftAddr string, creds pki.Creds, seal []byte, bootstrap bool) (*Group, error) {
	server, client, err := raftTLS(creds)
	if err != nil {
		return nil, err
	}
	g := &Group{Name: name, Role: role, Creds: creds, SealKey: seal, dir: m.groupDir(name), heartbeats: map[string]time.Time{}}
	store, err := raftstore.Open(raftstore.Config{
		Cluster: name, NodeID: m.cfg.NodeName, Dir: filepath.Join(g.dir, "raft"), RaftAddr: raftAddr,
		ServerTLS: server, ClientTLS: client, Bootstrap: bootstrap, Logger: m.cfg.Logger,
		Forward:          m.forwarder(name),
		HeartbeatTimeout: m.cfg.HeartbeatTimeout, ElectionTimeout: m.cfg.ElectionTimeout,
		LeaderLeaseTimeout: m.cfg.LeaderLeaseTimeout, Observe: m.cfg.Observe,
	})
	if err != nil {
		return nil, fmt.Errorf("open cluster %s: %w", name, err)
	}
	g.Store = store
	if err := m.tls.Set(creds); err != nil {
		store.Close()
		return nil, err
	}
	m.mu.Lock()
	m.groups[name] = g
	m.mu.Unlock()
	m.log.Info("cluster membership open", "cluster", name, "role", roleString(role), "raft", raftAddr)
	return g, nil
}

func (m *Manager) saveMember(dir string, role pb.NodeRole, raftAddr string, creds pki.Creds, seal []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := creds.Save(filepath.Join(dir, "creds")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "seal.key"), seal, 0o600); err != nil {
		return err
	}
	b, _ := json.Marshal(member{Role: roleString(role), RaftAddr: raftAddr})
	// member.json last: its presence marks a complete membership.
	return os.WriteFile(filepath.Join(dir, "member.json"), b, 0o600)
}

// nextRaftAddr picks the first raft port not used by another membership.
func (m *Manager) nextRaftAddr() string {
	used := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, "clusters"))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(m.groupDir(e.Name()), "member.json"))
		if err == nil {
			var mem member
			if json.Unmarshal(b, &mem) == nil {
				used[mem.RaftAddr] = true
			}
		}
	}
	for p := m.cfg.RaftPortBase; ; p++ {
		a := net.JoinHostPort(m.cfg.AdvertiseIP, strconv.Itoa(p))
		if !used[a] {
			return a
		}
	}
}

func (m *Manager) checkNew(name string) error {
	if err := raftstore.ValidName("cluster", name); err != nil {
		return err
	}
	if _, err := m.Group(name); err == nil {
		return errdefs.Exists("this node is already a member of cluster %q", name)
	}
	if _, err := os.Stat(m.groupDir(name)); err == nil {
		return errdefs.Exists("data for cluster %q already exists in %s: remove it to start over", name, m.groupDir(name))
	}
	return nil
}

func (m *Manager) nodeMessage(role pb.NodeRole, raftAddr string) *pb.Node {
	return &pb.Node{
		Name: m.cfg.NodeName, Role: role, RaftAddress: raftAddr, ApiAddress: m.cfg.APIAddr,
		StorageAddress: m.cfg.AdvertiseIP,
	}
}

// Init bootstraps a new cluster with this node as its first member.
func (m *Manager) Init(ctx context.Context, name, raftAddr string, role pb.NodeRole) (*Group, error) {
	if err := m.checkNew(name); err != nil {
		return nil, err
	}
	if role == pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		role = pb.NodeRole_NODE_ROLE_VOTER
	}
	if raftAddr == "" {
		raftAddr = m.nextRaftAddr()
	}
	now := time.Now()
	ca, err := pki.NewCA(name, now)
	if err != nil {
		return nil, err
	}
	creds, err := ca.NewCreds(pki.RoleNode, m.cfg.NodeName, m.ips(), now, DefaultCertTTL)
	if err != nil {
		return nil, err
	}
	seal, err := pki.NewSealKey()
	if err != nil {
		return nil, err
	}
	sealedCA, err := pki.Seal(seal, ca.KeyPEM)
	if err != nil {
		return nil, err
	}
	dir := m.groupDir(name)
	if err := m.saveMember(dir, role, raftAddr, creds, seal); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("save membership: %w", err)
	}
	g, err := m.open(name, role, raftAddr, creds, seal, true)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := waitLeader(ctx, g.Store); err != nil {
		return nil, err
	}
	cmd, _ := raftstore.NewCommand(pb.CommandType_COMMAND_TYPE_BOOTSTRAP, &pb.BootstrapCommand{
		Cluster: &pb.ClusterInfo{Name: name, CaCertPem: string(ca.CertPEM), SealedCaKey: sealedCA, CreatedUnixNano: now.UnixNano()},
		Node:    m.nodeMessage(role, raftAddr),
	}, now.UnixNano(), "node:"+m.cfg.NodeName)
	if _, err := g.Store.Propose(ctx, cmd); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", name, err)
	}
	return g, nil
}

func (m *Manager) ips() []net.IP {
	var ips []net.IP
	if ip := net.ParseIP(m.cfg.AdvertiseIP); ip != nil {
		ips = append(ips, ip)
	}
	return append(ips, net.ParseIP("127.0.0.1"))
}

func waitLeader(ctx context.Context, s *raftstore.Store) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ch := s.ObserveLeadership()
	for !s.IsLeader() {
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return errdefs.Unavailable("no leadership after bootstrap: %v", ctx.Err())
		}
	}
	return nil
}

// Join asks a member (peer API address) to admit this node with a token,
// then opens the group; the leader adds it to Raft.
func (m *Manager) Join(ctx context.Context, name, token, peer, raftAddr string, role pb.NodeRole) (*Group, error) {
	if err := m.checkNew(name); err != nil {
		return nil, err
	}
	tok, err := pki.ParseToken(token)
	if err != nil {
		return nil, errdefs.Invalid("join token: %v", err)
	}
	if tok.Cluster != name {
		return nil, errdefs.Invalid("this token is for cluster %q, not %q", tok.Cluster, name)
	}
	if role == pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		role = pb.NodeRole_NODE_ROLE_VOTER
	}
	if raftAddr == "" {
		raftAddr = m.nextRaftAddr()
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CSR(key, m.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	conn, err := m.dial(ctx, peer, credentials.NewTLS(pki.PinnedClientTLS(name, tok.CAFingerprint)))
	if err != nil {
		return nil, errdefs.Unavailable("reach %s: %v", peer, err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := pb.NewClusterServiceClient(conn).Admit(cctx, &pb.AdmitRequest{
		Cluster: name, Token: token, Name: m.cfg.NodeName, CsrPem: csr,
		RaftAddress: raftAddr, ApiAddress: m.cfg.APIAddr, Role: role,
	})
	if err != nil {
		return nil, err
	}
	creds := pki.Creds{Cluster: name, CACertPEM: resp.CaCertPem, CertPEM: resp.CertPem, KeyPEM: keyPEM}
	dir := m.groupDir(name)
	if err := m.saveMember(dir, role, raftAddr, creds, resp.SealKey); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("save membership: %w", err)
	}
	g, err := m.open(name, role, raftAddr, creds, resp.SealKey, false)
	if err != nil {
		return nil, err
	}
	// Wait until this node sees itself in the replicated state.
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	for {
		var ok bool
		g.Store.Read(func(s *raftstore.State) { _, ok = s.Nodes[m.cfg.NodeName] })
		if ok {
			return g, nil
		}
		_, ch := g.Store.Watch()
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
		case <-wctx.Done():
			return g, errdefs.Unavailable("joined %s but did not catch up with the leader in time", name)
		}
	}
}

// Admit runs on the leader (a follower forwards it): it checks the token,
// signs the CSR, records the node (consuming the token) and adds it to Raft.
func (m *Manager) Admit(ctx context.Context, req *pb.AdmitRequest) (*pb.AdmitResponse, error) {
	g, err := m.Group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if !g.Store.IsLeader() {
		conn, err := m.LeaderConn(ctx, req.Cluster)
		if err != nil {
			return nil, err
		}
		return pb.NewClusterServiceClient(conn).Admit(ctx, req)
	}
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		return nil, errdefs.Invalid("join token: %v", err)
	}
	var (
		rec *pb.JoinToken
		ci  *pb.ClusterInfo
	)
	g.Store.Read(func(s *raftstore.State) { rec, ci = s.Tokens[tok.ID], s.Cluster })
	if rec == nil || !pki.CheckSecret(tok.Secret, rec.SecretHash) {
		return nil, errdefs.Denied("join token unknown or expired: create a new one with `corral cluster token`")
	}
	if rec.Used {
		return nil, errdefs.Denied("join token already used: tokens are single-use, create a new one")
	}
	if err := raftstore.ValidName("node", req.Name); err != nil {
		return nil, err
	}
	ca, err := m.loadCA(g, ci)
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	if host, _, err := net.SplitHostPort(req.RaftAddress); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		}
	}
	now := time.Now()
	cert, err := ca.SignCSR(req.CsrPem, pki.RoleNode, req.Name, ips, now, DefaultCertTTL)
	if err != nil {
		return nil, errdefs.Invalid("certificate request: %v", err)
	}
	role := req.Role
	if role == pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		role = rec.Role
	}
	storageAddr := ""
	if len(ips) > 0 {
		storageAddr = ips[0].String()
	}
	cmd, _ := raftstore.NewCommand(pb.CommandType_COMMAND_TYPE_NODE_JOIN, &pb.NodeJoinCommand{
		TokenId: tok.ID,
		Node: &pb.Node{Name: req.Name, Role: role, RaftAddress: req.RaftAddress, ApiAddress: req.ApiAddress,
			StorageAddress: storageAddr},
	}, now.UnixNano(), "node:"+req.Name)
	if _, err := g.Store.Propose(ctx, cmd); err != nil {
		return nil, err
	}
	// Not waited for: with one member, the configuration change commits
	// only once the new node runs its Raft, which it does after this reply.
	go func() {
		if err := g.Store.AddVoter(req.Name, req.RaftAddress); err != nil {
			m.log.Error("add voter", "cluster", g.Name, "new", req.Name, "err", err)
		}
	}()
	return &pb.AdmitResponse{CertPem: cert, CaCertPem: []byte(ci.CaCertPem), SealKey: g.SealKey}, nil
}

func (m *Manager) loadCA(g *Group, ci *pb.ClusterInfo) (*pki.CA, error) {
	if ci == nil {
		return nil, errdefs.Unavailable("cluster %s is not initialised yet", g.Name)
	}
	keyPEM, err := pki.Unseal(g.SealKey, ci.SealedCaKey)
	if err != nil {
		return nil, fmt.Errorf("unseal CA key: %w", err)
	}
	return pki.LoadCA([]byte(ci.CaCertPem), keyPEM)
}

// CreateToken records a new single-use join token and returns it.
func (m *Manager) CreateToken(ctx context.Context, cluster string, ttl time.Duration, role pb.NodeRole, actor string) (pki.Token, time.Time, error) {
	g, err := m.Group(cluster)
	if err != nil {
		return pki.Token{}, time.Time{}, err
	}
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	var caPEM string
	g.Store.Read(func(s *raftstore.State) {
		if s.Cluster != nil {
			caPEM = s.Cluster.CaCertPem
		}
	})
	cert, err := pki.ParseCertPEM([]byte(caPEM))
	if err != nil {
		return pki.Token{}, time.Time{}, errdefs.Unavailable("cluster %s has no CA yet: %v", cluster, err)
	}
	tok, err := pki.NewToken(cluster, pki.Fingerprint(cert))
	if err != nil {
		return pki.Token{}, time.Time{}, err
	}
	now := time.Now()
	exp := now.Add(ttl)
	if role == pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		role = pb.NodeRole_NODE_ROLE_VOTER
	}
	cmd, _ := raftstore.NewCommand(pb.CommandType_COMMAND_TYPE_TOKEN_CREATE, &pb.TokenCreateCommand{Token: &pb.JoinToken{
		Id: tok.ID, SecretHash: pki.HashSecret(tok.Secret), ExpiresUnixNano: exp.UnixNano(), Role: role,
	}}, now.UnixNano(), actor)
	if _, err := g.Store.Propose(ctx, cmd); err != nil {
		return pki.Token{}, time.Time{}, err
	}
	return tok, exp, nil
}

// IssueAdminCert signs an admin certificate for the CSR (leader's CA key).
func (m *Manager) IssueAdminCert(ctx context.Context, req *pb.IssueAdminCertRequest) (*pb.IssueAdminCertResponse, error) {
	g, err := m.Group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if err := raftstore.ValidName("admin", req.Name); err != nil {
		return nil, err
	}
	var (
		ci    *pb.ClusterInfo
		nodes []*pb.Node
	)
	g.Store.Read(func(s *raftstore.State) { ci, nodes = s.Cluster, s.SortedNodes() })
	ca, err := m.loadCA(g, ci)
	if err != nil {
		return nil, err
	}
	ttl := DefaultAdminCertTTL
	if req.TtlSeconds > 0 {
		ttl = time.Duration(req.TtlSeconds) * time.Second
	}
	cert, err := ca.SignCSR(req.CsrPem, pki.RoleAdmin, req.Name, nil, time.Now(), ttl)
	if err != nil {
		return nil, errdefs.Invalid("certificate request: %v", err)
	}
	resp := &pb.IssueAdminCertResponse{CertPem: cert, CaCertPem: []byte(ci.CaCertPem)}
	for _, n := range nodes {
		resp.Endpoints = append(resp.Endpoints, n.ApiAddress)
	}
	now := time.Now()
	ev, _ := raftstore.NewCommand(pb.CommandType_COMMAND_TYPE_EVENT, &pb.EventCommand{Event: &pb.Event{
		Action: "admin.cert", Target: req.Name, Result: "ok",
	}}, now.UnixNano(), "node:"+m.cfg.NodeName)
	_, _ = g.Store.Propose(ctx, ev)
	return resp, nil
}

// Close stops every group.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, g := range m.groups {
		errs = append(errs, g.Store.Close())
	}
	m.connMu.Lock()
	for _, c := range m.conns {
		c.Close()
	}
	m.connMu.Unlock()
	return errors.Join(errs...)
}

// Propose builds a command stamped with this node's clock and proposes it.
func (g *Group) Propose(ctx context.Context, t pb.CommandType, payload proto.Message, actor string) (any, error) {
	cmd, err := raftstore.NewCommand(t, payload, time.Now().UnixNano(), actor)
	if err != nil {
		return nil, err
	}
	return g.Store.Propose(ctx, cmd)
}
