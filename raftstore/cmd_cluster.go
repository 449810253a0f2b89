package raftstore

import (
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

func init() {
	register(pb.CommandType_COMMAND_TYPE_BOOTSTRAP, checkBootstrap, applyBootstrap)
	register(pb.CommandType_COMMAND_TYPE_TOKEN_CREATE, checkTokenCreate, applyTokenCreate)
	register(pb.CommandType_COMMAND_TYPE_NODE_JOIN, checkNodeJoin, applyNodeJoin)
	register(pb.CommandType_COMMAND_TYPE_NODE_REMOVE, checkNodeRemove, applyNodeRemove)
	register(pb.CommandType_COMMAND_TYPE_NODE_INVENTORY, checkNodeInventory, applyNodeInventory)
	register(pb.CommandType_COMMAND_TYPE_NODE_MAINTENANCE, checkNodeMaintenance, applyNodeMaintenance)
	register(pb.CommandType_COMMAND_TYPE_NODE_HEALTH, checkNodeHealth, applyNodeHealth)
	register(pb.CommandType_COMMAND_TYPE_EVENT, checkEvent, applyEvent)
	register(pb.CommandType_COMMAND_TYPE_SETTINGS, checkSettings, applySettings)
}

func event(s *State, m Meta, action, target, result, msg string) {
	s.addEvent(&pb.Event{TimeUnixNano: m.Time, Actor: m.Actor, Action: action, Target: target, Result: result, Message: msg})
}

func checkBootstrap(s *State, c *pb.BootstrapCommand, _ Meta) error {
	if s.Cluster != nil {
		return errdefs.Exists("cluster %q is already initialised", s.Cluster.Name)
	}
	if err := ValidName("cluster", c.GetCluster().GetName()); err != nil {
		return err
	}
	return ValidName("node", c.GetNode().GetName())
}

func applyBootstrap(s *State, c *pb.BootstrapCommand, m Meta) any {
	s.Cluster = c.Cluster
	n := proto.Clone(c.Node).(*pb.Node)
	n.JoinedUnixNano = m.Time
	n.Health = pb.NodeHealth_NODE_HEALTH_READY
	s.Nodes[n.Name] = n
	event(s, m, "cluster.init", c.Cluster.Name, "ok", "cluster created with first node "+n.Name)
	return s.Cluster
}

func checkTokenCreate(s *State, c *pb.TokenCreateCommand, _ Meta) error {
	if c.GetToken().GetId() == "" || c.Token.SecretHash == "" {
		return errdefs.Invalid("token needs an id and a secret hash")
	}
	if _, ok := s.Tokens[c.Token.Id]; ok {
		return errdefs.Exists("token %s exists", c.Token.Id)
	}
	return nil
}

func applyTokenCreate(s *State, c *pb.TokenCreateCommand, m Meta) any {
	s.Tokens[c.Token.Id] = c.Token
	// Drop expired tokens so the table stays small.
	for _, id := range sortedKeys(s.Tokens) {
		if t := s.Tokens[id]; t.ExpiresUnixNano < m.Time {
			delete(s.Tokens, id)
		}
	}
	event(s, m, "token.create", c.Token.Id, "ok", "")
	return c.Token
}

func checkNodeJoin(s *State, c *pb.NodeJoinCommand, m Meta) error {
	n := c.GetNode()
	if err := ValidName("node", n.GetName()); err != nil {
		return err
	}
	if _, ok := s.Nodes[n.Name]; ok {
		return errdefs.Exists("node %q is already a member; remove it first or pick another name", n.Name)
	}
	t, ok := s.Tokens[c.TokenId]
	if !ok {
		return errdefs.Denied("join token unknown or expired: create a new one with `corral cluster token`")
	}
	if t.Used {
		return errdefs.Denied("join token already used: tokens are single-use, create a new one")
	}
	if t.ExpiresUnixNano < m.Time {
		return errdefs.Denied("join token expired: create a new one with `corral cluster token`")
	}
	return nil
}

func applyNodeJoin(s *State, c *pb.NodeJoinCommand, m Meta) any {
	t := proto.Clone(s.Tokens[c.TokenId]).(*pb.JoinToken)
	t.Used = true
	s.Tokens[t.Id] = t
	n := proto.Clone(c.Node).(*pb.Node)
	n.JoinedUnixNano = m.Time
	n.Health = pb.NodeHealth_NODE_HEALTH_READY
	if n.Role == pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		n.Role = t.Role
	}
	s.Nodes[n.Name] = n
	event(s, m, "node.join", n.Name, "ok", "joined as "+roleName(n.Role))
	return n
}

func roleName(r pb.NodeRole) string {
	if r == pb.NodeRole_NODE_ROLE_WITNESS {
		return "witness"
	}
	return "voter"
}

func checkNodeRemove(s *State, c *pb.NodeRemoveCommand, _ Meta) error {
	if _, ok := s.Nodes[c.Name]; !ok {
		return errdefs.NotFound("node %q not found", c.Name)
	}
	for _, v := range s.VMs {
		if v.Node == c.Name {
			return errdefs.Precondition("node %q still holds VM %q: drain it first (`corral node drain %s`)", c.Name, v.Name, c.Name)
		}
	}
	return nil
}

func applyNodeRemove(s *State, c *pb.NodeRemoveCommand, m Meta) any {
	delete(s.Nodes, c.Name)
	event(s, m, "node.remove", c.Name, "ok", "")
	return nil
}

func checkNodeInventory(s *State, c *pb.NodeInventoryCommand, _ Meta) error {
	if _, ok := s.Nodes[c.Name]; !ok {
		return errdefs.NotFound("node %q not found", c.Name)
	}
	return nil
}

func applyNodeInventory(s *State, c *pb.NodeInventoryCommand, m Meta) any {
	n := proto.Clone(s.Nodes[c.Name]).(*pb.Node)
	n.Inventory = c.Inventory
	n.Ready = c.Inventory != nil
	if c.StorageAddress != "" {
		n.StorageAddress = c.StorageAddress
	}
	s.Nodes[n.Name] = n
	return n
}

func checkNodeMaintenance(s *State, c *pb.NodeMaintenanceCommand, _ Meta) error {
	if _, ok := s.Nodes[c.Name]; !ok {
		return errdefs.NotFound("node %q not found", c.Name)
	}
	return nil
}

func applyNodeMaintenance(s *State, c *pb.NodeMaintenanceCommand, m Meta) any {
	n := proto.Clone(s.Nodes[c.Name]).(*pb.Node)
	n.Maintenance = c.Maintenance
	s.Nodes[n.Name] = n
	action := "node.resume"
	if c.Maintenance {
		action = "node.maintenance"
	}
	event(s, m, action, n.Name, "ok", "")
	return n
}

func checkNodeHealth(s *State, c *pb.NodeHealthCommand, _ Meta) error {
	n, ok := s.Nodes[c.Name]
	if !ok {
		return errdefs.NotFound("node %q not found", c.Name)
	}
	if c.Unfence {
		if !n.Fenced {
			return errdefs.Precondition("node %q is not fenced", c.Name)
		}
		// A fenced node comes back only once it reported that it runs no
		// stale guest any more.
		if !n.FenceClean {
			return errdefs.Precondition("node %q has not reported that its stale guests are destroyed", c.Name)
		}
	}
	return nil
}

func applyNodeHealth(s *State, c *pb.NodeHealthCommand, m Meta) any {
	n := proto.Clone(s.Nodes[c.Name]).(*pb.Node)
	prev := n.Health
	if c.Health != pb.NodeHealth_NODE_HEALTH_UNSPECIFIED {
		n.Health = c.Health
	}
	switch {
	case c.Fence:
		n.Fenced = true
		n.FencedUnixNano = m.Time
		event(s, m, "ha.fence", n.Name, "ok", c.Reason)
	case c.Unfence:
		n.Fenced, n.FenceClean = false, false
		event(s, m, "ha.unfence", n.Name, "ok", c.Reason)
	case c.Clean:
		if n.Fenced && !n.FenceClean {
			n.FenceClean = true
			event(s, m, "ha.clean", n.Name, "ok", "fenced node destroyed its stale guests")
		}
	}
	if prev != n.Health {
		event(s, m, "node.health", n.Name, healthName(n.Health), c.Reason)
	}
	s.Nodes[n.Name] = n
	return n
}

func healthName(h pb.NodeHealth) string {
	switch h {
	case pb.NodeHealth_NODE_HEALTH_READY:
		return "ready"
	case pb.NodeHealth_NODE_HEALTH_SUSPECT:
		return "suspect"
	case pb.NodeHealth_NODE_HEALTH_DOWN:
		return "down"
	}
	return "unknown"
}

func checkEvent(_ *State, c *pb.EventCommand, _ Meta) error {
	if c.GetEvent().GetAction() == "" {
		return errdefs.Invalid("event needs an action")
	}
	return nil
}

func applyEvent(s *State, c *pb.EventCommand, m Meta) any {
	e := proto.Clone(c.Event).(*pb.Event)
	e.TimeUnixNano = m.Time
	if e.Actor == "" {
		e.Actor = m.Actor
	}
	s.addEvent(e)
	return e
}

func checkSettings(s *State, c *pb.SettingsCommand, _ Meta) error {
	if s.Cluster == nil {
		return errdefs.Precondition("cluster not initialised")
	}
	st := c.GetSettings()
	if st.GetCpuOvercommit() < 0 || st.GetMemOvercommit() < 0 || st.GetSuspectAfterMs() < 0 || st.GetDownAfterMs() < 0 {
		return errdefs.Invalid("settings must not be negative")
	}
	merged := s.Settings()
	proto.Merge(merged, st)
	if merged.DownAfterMs < merged.SuspectAfterMs {
		return errdefs.Invalid("ha down_after (%d ms) must be at least suspect_after (%d ms)", merged.DownAfterMs, merged.SuspectAfterMs)
	}
	return nil
}

func applySettings(s *State, c *pb.SettingsCommand, m Meta) any {
	ci := proto.Clone(s.Cluster).(*pb.ClusterInfo)
	if ci.Settings == nil {
		ci.Settings = &pb.Settings{}
	}
	proto.Merge(ci.Settings, c.Settings)
	s.Cluster = ci
	event(s, m, "cluster.settings", ci.Name, "ok", "")
	return s.Settings()
}
