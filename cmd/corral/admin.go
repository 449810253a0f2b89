package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
)

// Files written by admin issue-cert.
const (
	adminCAFile   = "ca.crt"
	adminCertFile = "admin.crt"
	adminKeyFile  = "admin.key"
)

func (a *app) adminCmd() *cobra.Command {
	var outDir, ctxName string
	var endpoints []string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue-cert NAME --out-dir DIR",
		Short: "Get an admin certificate for NAME and a context that uses it",
		Long: "Generates a private key locally (it never leaves this machine), has the cluster CA sign it,\n" +
			"writes ca.crt, admin.crt and admin.key into DIR and saves a context pointing at them.\n" +
			"--endpoint here sets the endpoints of the new context (default: the API addresses of the members);\n" +
			"the certificate is requested over the current connection (typically the local socket).",
		Example: "  corral --socket /run/corral/corrald.sock --cluster prod admin issue-cert alice --out-dir ~/.config/corral/prod",
		Args:    argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outDir == "" {
				return usageErrorf("--out-dir is required")
			}
			key, keyPEM, err := pki.NewKey()
			if err != nil {
				return err
			}
			csr, err := pki.CSR(key, args[0])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Cluster.IssueAdminCert(ctx, &pb.IssueAdminCertRequest{
					Cluster: cluster, Name: args[0], CsrPem: csr, TtlSeconds: int64(ttl / time.Second),
				})
				if err != nil {
					return err
				}
				dir, err := filepath.Abs(outDir)
				if err != nil {
					return err
				}
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return fmt.Errorf("create %s: %w", dir, err)
				}
				files := []struct {
					name string
					data []byte
				}{{adminCAFile, resp.GetCaCertPem()}, {adminCertFile, resp.GetCertPem()}, {adminKeyFile, keyPEM}}
				for _, f := range files {
					if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
						return fmt.Errorf("write credentials: %w", err)
					}
				}
				eps := endpoints
				if len(eps) == 0 {
					eps = resp.GetEndpoints()
				}
				if len(eps) == 0 {
					return errors.New("credentials written but no endpoint known: pass --endpoint, or fix it later with 'corral config set-context'")
				}
				name := or(ctxName, cluster)
				err = a.editConfig(func(cfg *Config) error {
					cfg.upsert(Context{
						Name: name, Cluster: cluster, Endpoints: slices.Clone(eps),
						CA:   filepath.Join(dir, adminCAFile),
						Cert: filepath.Join(dir, adminCertFile),
						Key:  filepath.Join(dir, adminKeyFile),
					})
					if cfg.CurrentContext == "" {
						cfg.CurrentContext = name
					}
					return nil
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Wrote %s, %s and %s in %s\n", adminCAFile, adminCertFile, adminKeyFile, dir)
				fmt.Fprintf(a.out, "Context %q (cluster %s, endpoints %s) saved in %s\n", name, cluster, strings.Join(eps, ","), a.configPath)
				return nil
			})
		},
	}
	fl := issue.Flags()
	fl.StringVar(&outDir, "out-dir", "", "directory for ca.crt, admin.crt and admin.key")
	fl.StringVar(&ctxName, "context-name", "", "name of the context to create or update (default: the cluster name)")
	// Shadows the global --endpoint: here it is what the new context gets.
	fl.StringArrayVar(&endpoints, "endpoint", nil, "endpoint host:port of the new context (repeatable)")
	fl.DurationVar(&ttl, "ttl", 0, "certificate lifetime (default: the server's)")
	return group("admin", "Manage admin credentials", issue)
}
