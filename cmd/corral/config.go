package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Config is the CLI config file, shaped like kubectl's: named contexts,
// each saying how to reach one cluster, and the one used by default.
type Config struct {
	CurrentContext string    `json:"current-context,omitempty"`
	Contexts       []Context `json:"contexts,omitempty"`
}

// Context says how to reach one cluster: over the local socket, or over
// mutual TLS to endpoints with the credential files ca, cert and key.
// Relative file paths are relative to the config file's directory.
type Context struct {
	Name      string   `json:"name"`
	Cluster   string   `json:"cluster,omitempty"`
	Endpoints []string `json:"endpoints,omitempty"`
	CA        string   `json:"ca,omitempty"`
	Cert      string   `json:"cert,omitempty"`
	Key       string   `json:"key,omitempty"`
	Socket    string   `json:"socket,omitempty"`
}

func defaultConfigPath() string {
	if p := os.Getenv("CORRAL_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "corral.yaml"
	}
	return filepath.Join(dir, "corral", "config.yaml")
}

// loadConfig reads path; a missing file is an empty config.
func loadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Config{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	return &c, nil
}

// save writes the config atomically, 0600: it points at private keys.
func (c *Config) save(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	return nil
}

func (c *Config) find(name string) *Context {
	for i := range c.Contexts {
		if c.Contexts[i].Name == name {
			return &c.Contexts[i]
		}
	}
	return nil
}

// upsert replaces the context of the same name or appends it.
func (c *Config) upsert(ctx Context) {
	if old := c.find(ctx.Name); old != nil {
		*old = ctx
		return
	}
	c.Contexts = append(c.Contexts, ctx)
}

func (c *Config) names() []string {
	var out []string
	for _, x := range c.Contexts {
		out = append(out, x.Name)
	}
	return out
}

// resolve makes a path from the config file relative to its directory.
func resolvePath(configPath, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return filepath.Join(filepath.Dir(configPath), p)
}

func (a *app) configCmd() *cobra.Command {
	useCtx := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the default context",
		Args:  argNames("NAME"),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			c, err := loadConfig(a.configPath)
			if err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			return c.names(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(_ *cobra.Command, args []string) error {
			return a.editConfig(func(c *Config) error {
				if c.find(args[0]) == nil {
					return fmt.Errorf("no context %q in %s (have: %s)", args[0], a.configPath, strings.Join(c.names(), ", "))
				}
				c.CurrentContext = args[0]
				fmt.Fprintf(a.out, "Switched to context %q.\n", args[0])
				return nil
			})
		},
	}
	getCtx := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts of the config file",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			c, err := loadConfig(a.configPath)
			if err != nil {
				return err
			}
			t := newTable("CURRENT", "NAME", "CLUSTER", "ENDPOINTS", "SOCKET")
			for _, x := range c.Contexts {
				cur := ""
				if x.Name == c.CurrentContext {
					cur = "*"
				}
				t.row(cur, x.Name, x.Cluster, strings.Join(x.Endpoints, ","), x.Socket)
			}
			return a.printAny(c, t)
		},
	}
	currentCtx := &cobra.Command{
		Use:   "current-context",
		Short: "Print the default context",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			c, err := loadConfig(a.configPath)
			if err != nil {
				return err
			}
			if c.CurrentContext == "" {
				return errors.New("no current context: see 'corral config use-context'")
			}
			fmt.Fprintln(a.out, c.CurrentContext)
			return nil
		},
	}
	var ca, cert, key string
	setCtx := &cobra.Command{
		Use:   "set-context NAME",
		Short: "Create or update a context (uses the global --cluster, --endpoint and --socket)",
		Example: "  corral config set-context prod --cluster prod --endpoint atlantis:7443 --endpoint discovery:7443 --ca ca.crt --cert admin.crt --key admin.key\n" +
			"  corral config set-context local --socket /run/corral/corrald.sock --cluster prod",
		Args: argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.editConfig(func(c *Config) error {
				x := Context{Name: args[0]}
				if old := c.find(args[0]); old != nil {
					x = *old
				}
				changed := func(name string) bool { return cmd.Flags().Changed(name) }
				if changed("cluster") {
					x.Cluster = a.cluster
				}
				if changed("endpoint") {
					x.Endpoints = slices.Clone(a.endpoints)
				}
				if changed("socket") {
					x.Socket = a.socket
				}
				for _, f := range []struct {
					flag string
					dst  *string
					val  string
				}{{"ca", &x.CA, ca}, {"cert", &x.Cert, cert}, {"key", &x.Key, key}} {
					if changed(f.flag) {
						abs, err := filepath.Abs(f.val)
						if err != nil {
							return err
						}
						*f.dst = abs
					}
				}
				c.upsert(x)
				if c.CurrentContext == "" {
					c.CurrentContext = x.Name
				}
				fmt.Fprintf(a.out, "Context %q saved in %s.\n", x.Name, a.configPath)
				return nil
			})
		},
	}
	setCtx.Flags().StringVar(&ca, "ca", "", "CA certificate file of the cluster")
	setCtx.Flags().StringVar(&cert, "cert", "", "client certificate file")
	setCtx.Flags().StringVar(&key, "key", "", "client private key file")
	delCtx := &cobra.Command{
		Use:   "delete-context NAME",
		Short: "Remove a context",
		Args:  argNames("NAME"),
		RunE: func(_ *cobra.Command, args []string) error {
			return a.editConfig(func(c *Config) error {
				i := slices.IndexFunc(c.Contexts, func(x Context) bool { return x.Name == args[0] })
				if i < 0 {
					return fmt.Errorf("no context %q in %s", args[0], a.configPath)
				}
				c.Contexts = slices.Delete(c.Contexts, i, i+1)
				if c.CurrentContext == args[0] {
					c.CurrentContext = ""
				}
				return nil
			})
		},
	}
	return group("config", "Manage the CLI's contexts ("+defaultConfigPath()+")", useCtx, getCtx, currentCtx, setCtx, delCtx)
}

// editConfig loads the config file, applies fn and saves it.
func (a *app) editConfig(fn func(*Config) error) error {
	c, err := loadConfig(a.configPath)
	if err != nil {
		return err
	}
	if err := fn(c); err != nil {
		return err
	}
	return c.save(a.configPath)
}
