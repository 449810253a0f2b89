package api

import (
	"context"
	"strings"

	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// caller is who sent a request.
type caller struct {
	local bool // the daemon's unix socket: root on this host, admin of all
	id    pki.Identity
	tls   bool
}

func (c caller) String() string {
	if c.local {
		return "local:root"
	}
	if c.id.Name != "" {
		return string(c.id.Role) + ":" + c.id.Name
	}
	return "anonymous"
}

type callerKey struct{}

func callerFrom(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// Access classes of methods.
const (
	accessMember = iota // local, or a certificate of the request's cluster
	accessLocal         // local socket only
	accessNode          // a node certificate of the request's cluster
	accessOpen          // anyone over TLS (the method checks a token itself)
	accessAny           // local or any verified certificate (filters itself)
)

var methodAccess = map[string]int{
	"InitCluster":  accessLocal,
	"JoinCluster":  accessLocal,
	"Admit":        accessOpen,
	"Propose":      accessNode,
	"Heartbeat":    accessNode,
	"ReadIndex":    accessNode,
	"ListClusters": accessAny,
}

func methodName(full string) string { return full[strings.LastIndex(full, "/")+1:] }

type clusterNamed interface{ GetCluster() string }

// authorize decides whether the caller may run method on the request's
// cluster, and returns the caller.
func authorize(ctx context.Context, local bool, full string, req any) (caller, error) {
	c := caller{local: local}
	cluster := ""
	if r, ok := req.(clusterNamed); ok {
		cluster = r.GetCluster()
	}
	// other is a verified identity of another cluster than the request's:
	// never the caller's identity, only named in the refusal.
	var other pki.Identity
	if !local {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
				c.tls = true
				if len(ti.State.VerifiedChains) > 0 {
					if id, err := pki.PeerIdentity(ti.State); err == nil && ti.State.ServerName == id.Cluster {
						if cluster == "" || id.Cluster == cluster {
							c.id = id
						} else {
							other = id
						}
					}
				}
			}
		}
	}
	access := methodAccess[methodName(full)]
	switch access {
	case accessLocal:
		if !local {
			return c, errdefs.Denied("%s works only on the daemon's local socket: run it on the node (corral --socket)", methodName(full))
		}
	case accessOpen:
		if !local && !c.tls {
			return c, errdefs.Unauthenticated("TLS required")
		}
	case accessNode:
		if c.id.Role != pki.RoleNode || c.id.Cluster != cluster {
			return c, errdefs.Denied("%s is for cluster nodes only", methodName(full))
		}
	case accessAny:
		if !local && c.id.Name == "" {
			return c, errdefs.Unauthenticated("a client certificate issued by the cluster CA is required: see `corral admin issue-cert`")
		}
	default:
		if local {
			break
		}
		if c.id.Name == "" && other.Name != "" {
			return c, errdefs.Denied("your certificate is for cluster %q, not %q: use credentials of cluster %q (see `corral admin issue-cert`)", other.Cluster, cluster, cluster)
		}
		if c.id.Name == "" {
			return c, errdefs.Unauthenticated("a client certificate of cluster %q is required (wrong cluster, expired, or not signed by its CA): see `corral admin issue-cert`", cluster)
		}
		if c.id.Cluster != cluster {
			return c, errdefs.Denied("your certificate is for cluster %q, not %q", c.id.Cluster, cluster)
		}
	}
	return c, nil
}

// checkedStream authorizes the first message of a client-streaming RPC,
// which carries the cluster name.
type checkedStream struct {
	grpc.ServerStream
	local   bool
	method  string
	checked bool
	ctx     context.Context
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !s.checked {
		c, err := authorize(s.ServerStream.Context(), s.local, s.method, m)
		if err != nil {
			return toStatus(err)
		}
		s.ctx = context.WithValue(s.ctx, callerKey{}, c)
		s.checked = true
	}
	return nil
}
