package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

// connMode says what a command needs from its connection.
type connMode int

const (
	needCluster connMode = iota // most commands: a cluster name is required
	anyCluster                  // the command names no cluster (cluster list)
	localOnly                   // the local socket only (cluster init/join)
)

// callFunc is the body of a command once connected: each unary call gets
// the --timeout deadline from the client, streams run until ctx ends.
type callFunc func(ctx context.Context, c *client.Client, cluster string) error

// with connects as the global flags and the context say, runs fn and
// closes the connection: the one place commands get a client from.
func (a *app) with(cmd *cobra.Command, fn callFunc) error {
	return a.withMode(cmd, needCluster, fn)
}

func (a *app) withMode(cmd *cobra.Command, mode connMode, fn callFunc) error {
	opts, err := a.connOptions(mode == localOnly)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := client.Dial(ctx, opts, a.dialOpts...)
	if err != nil {
		return err
	}
	defer c.Close()
	cluster := opts.Cluster
	if cluster == "" && mode == needCluster {
		if cluster, err = a.onlyCluster(ctx, c, opts.Socket != ""); err != nil {
			return err
		}
	}
	return fn(ctx, c, cluster)
}

// onlyCluster picks the cluster when none was named: over the local
// socket, the daemon's only cluster, as a convenience on single-cluster
// nodes.
func (a *app) onlyCluster(ctx context.Context, c *client.Client, local bool) (string, error) {
	const hint = "pass --cluster or select a context (corral config use-context)"
	if !local {
		return "", errors.New("no cluster given: " + hint)
	}
	resp, err := c.Cluster.ListClusters(ctx, &pb.ListClustersRequest{})
	if err != nil {
		return "", err
	}
	switch cl := resp.GetClusters(); len(cl) {
	case 1:
		return cl[0], nil
	case 0:
		return "", errors.New("this node is in no cluster yet: see 'corral cluster init' or 'corral cluster join'")
	default:
		return "", fmt.Errorf("this node is in clusters %s: %s", strings.Join(cl, ", "), hint)
	}
}

// currentContext is the context named by --context, else the config's
// current one, else nil.
func (a *app) currentContext() (*Context, error) {
	cfg, err := loadConfig(a.configPath)
	if err != nil {
		return nil, err
	}
	name := a.contextName
	if name == "" {
		name = cfg.CurrentContext
	}
	if name == "" {
		return nil, nil
	}
	x := cfg.find(name)
	if x == nil {
		return nil, fmt.Errorf("no context %q in %s: see 'corral config get-contexts'", name, a.configPath)
	}
	return x, nil
}

// connOptions decides where to connect, by priority: --socket; the local
// socket for local-only commands; --endpoint with the context's
// credentials; the context's socket or endpoints; the default socket.
func (a *app) connOptions(local bool) (client.Options, error) {
	x, err := a.currentContext()
	if err != nil {
		return client.Options{}, err
	}
	if x == nil {
		x = &Context{}
	}
	o := client.Options{Cluster: a.cluster, Timeout: a.timeout}
	if o.Cluster == "" {
		o.Cluster = x.Cluster
	}
	switch {
	case a.socket != "":
		o.Socket = a.socket
	case local && x.Socket != "":
		o.Socket = x.Socket
	case local:
		o.Socket = client.DefaultSocket
	case len(a.endpoints) > 0:
		o.Endpoints = a.endpoints
	case x.Socket != "":
		o.Socket = x.Socket
	case len(x.Endpoints) > 0:
		o.Endpoints = x.Endpoints
	default:
		o.Socket = client.DefaultSocket
	}
	if o.Socket != "" {
		return o, nil
	}
	if x.CA == "" || x.Cert == "" || x.Key == "" {
		return o, errors.New("no credentials for mutual TLS: select a context with ca, cert and key (see 'corral admin issue-cert' and 'corral config set-context')")
	}
	for _, f := range []struct {
		path string
		dst  *[]byte
	}{{x.CA, &o.CACert}, {x.Cert, &o.Cert}, {x.Key, &o.Key}} {
		data, err := os.ReadFile(resolvePath(a.configPath, f.path))
		if err != nil {
			return o, fmt.Errorf("context %s: %w", x.Name, err)
		}
		*f.dst = data
	}
	return o, nil
}

// completeNames returns a completion function listing objects of one kind
// through the API; failures complete nothing rather than printing errors
// in the middle of the user's shell line.
func (a *app) completeNames(list func(ctx context.Context, c *client.Client, cluster string) ([]string, error)) func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		err := a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
			var err error
			names, err = list(ctx, c, cluster)
			return err
		})
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func listVMNames(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.VMs.ListVMs(ctx, &pb.ListVMsRequest{Cluster: cluster})
	var out []string
	for _, v := range resp.GetVms() {
		out = append(out, v.GetName())
	}
	return out, err
}

func listNodeNames(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.Nodes.ListNodes(ctx, &pb.ListNodesRequest{Cluster: cluster})
	var out []string
	for _, n := range resp.GetNodes() {
		out = append(out, n.GetName())
	}
	return out, err
}

func listNetworkNames(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.Networks.ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: cluster})
	var out []string
	for _, n := range resp.GetNetworks() {
		out = append(out, n.GetName())
	}
	return out, err
}

func listPoolNames(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.Storage.ListPools(ctx, &pb.ListPoolsRequest{Cluster: cluster})
	var out []string
	for _, p := range resp.GetPools() {
		out = append(out, p.GetName())
	}
	return out, err
}

func listVolumeNames(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.Storage.ListVolumes(ctx, &pb.ListVolumesRequest{Cluster: cluster})
	var out []string
	for _, v := range resp.GetVolumes() {
		out = append(out, v.GetPool()+"/"+v.GetName())
	}
	return out, err
}
