// Command corral is the admin CLI of corral clusters. It holds no business
// logic: each command parses its arguments, makes one or a few calls through
// package client and renders the answer (table, JSON or YAML). It talks to
// the local corrald over its unix socket (local root is an admin of every
// cluster on that daemon) or to any node of a cluster over mutual TLS, as
// chosen by a kubectl-like context in ~/.config/corral/config.yaml.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/minet/corral/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the call failed: the server's message is printed
	exitUsage = 2 // bad command line
)

// app carries the global flags and streams shared by every command.
type app struct {
	in          io.Reader
	out, errOut io.Writer
	dialOpts    []client.Option
	now         func() time.Time

	contextName string
	cluster     string
	socket      string
	endpoints   []string
	output      string
	timeout     time.Duration
	consistent  bool
	configPath  string
}

// run executes the CLI and returns the process exit code; tests call it
// with their own streams and dial options.
func run(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer, opts ...client.Option) int {
	a := &app{in: in, out: out, errOut: errOut, dialOpts: opts, now: time.Now}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var quiet *quietError
	if errors.As(err, &quiet) {
		return quiet.code
	}
	fmt.Fprintf(errOut, "Error: %s\n", errorMessage(err))
	if isUsage(err) {
		return exitUsage
	}
	return exitError
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "corral",
		Short:         "Manage corral clusters: nodes, VMs, networks and storage",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          noArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch a.output {
			case "table", "json", "yaml":
				return nil
			}
			return usageErrorf("unknown output format %q: use table, json or yaml", a.output)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.contextName, "context", "", "context of the config file to use (default: its current-context)")
	pf.StringVar(&a.cluster, "cluster", "", "cluster to act on (overrides the context's)")
	pf.StringVar(&a.socket, "socket", "", "talk to the local corrald on this unix socket as admin (default "+client.DefaultSocket+" when no context is set)")
	pf.StringArrayVar(&a.endpoints, "endpoint", nil, "API endpoint host:port (repeatable; overrides the context's)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	pf.DurationVar(&a.timeout, "timeout", client.DefaultTimeout, "deadline of each call")
	pf.BoolVar(&a.consistent, "consistent", false, "linearizable reads: confirm with the leader before answering (default: the answering node's state)")
	pf.StringVar(&a.configPath, "config", defaultConfigPath(), "config file ($CORRAL_CONFIG)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(
		a.clusterCmd(),
		a.adminCmd(),
		a.nodeCmd(),
		a.vmCmd(),
		a.netCmd(),
		a.storageCmd(),
		a.volumeCmd(),
		a.taskCmd(),
		a.eventCmd(),
		a.configCmd(),
	)
	return root
}

// group is a command that only holds subcommands: an unknown subcommand is
// a usage error instead of cobra's silent help.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(subs...)
	return c
}

// usageError marks command-line mistakes (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// quietError ends the command with an exit code and no message, the
// command having said what it had to.
type quietError struct{ code int }

func (e *quietError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func isUsage(err error) bool {
	var u usageError
	if errors.As(err, &u) {
		return true
	}
	// Errors cobra makes itself.
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "required flag", "if any flags in the group", "invalid argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// errorMessage shows the server's message for gRPC errors, without the
// "rpc error: code = … desc =" decoration, keeping any context wrapped
// around it.
func errorMessage(err error) string {
	msg := err.Error()
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		inner := se.(error).Error()
		return strings.Replace(msg, inner, se.GRPCStatus().Message(), 1)
	}
	return msg
}

// Argument validators that report usage errors.

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return usageErrorf("%s takes no arguments", cmd.CommandPath())
	}
	return nil
}

// argNames returns a validator requiring exactly the named arguments.
func argNames(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usageErrorf("%s needs %d argument(s): %s", cmd.CommandPath(), len(names), strings.Join(names, " "))
		}
		return nil
	}
}

// maxArgs allows up to n arguments.
func maxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usageErrorf("%s takes at most %d argument(s)", cmd.CommandPath(), n)
		}
		return nil
	}
}
