package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minet/corral/client"
)

func TestConfigCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := filepath.Join(dir, "sub", "config.yaml")
	steps := []struct {
		args     []string
		wantCode int
		wantOut  string
	}{
		{[]string{"config", "current-context"}, 1, ""},
		{[]string{"--cluster", "prod", "--endpoint", "a:7443", "--endpoint", "b:7443", "config", "set-context", "prod",
			"--ca", filepath.Join(dir, "ca.crt"), "--cert", "admin.crt", "--key", "admin.key"}, 0, `Context "prod" saved`},
		{[]string{"--socket", "/run/x.sock", "--cluster", "dev", "config", "set-context", "local"}, 0, ""},
		// The first context saved became the current one.
		{[]string{"config", "current-context"}, 0, "prod\n"},
		{[]string{"config", "use-context", "nope"}, 1, ""},
		{[]string{"config", "use-context", "local"}, 0, `Switched to context "local"`},
		{[]string{"config", "current-context"}, 0, "local\n"},
		// Updating keeps the fields not given.
		{[]string{"--cluster", "prod2", "config", "set-context", "prod"}, 0, ""},
		{[]string{"config", "get-contexts"}, 0, "prod2"},
		{[]string{"config", "delete-context", "local"}, 0, ""},
		{[]string{"config", "current-context"}, 1, ""},
	}
	for i, s := range steps {
		r := cli(t, "", config, s.args...)
		if r.code != s.wantCode || !strings.Contains(r.out, s.wantOut) {
			t.Fatalf("step %d %v: code %d, out %q, err %q; want code %d, out containing %q", i, s.args, r.code, r.out, r.errOut, s.wantCode, s.wantOut)
		}
	}
	c, err := loadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Contexts) != 1 {
		t.Fatalf("contexts = %+v", c.Contexts)
	}
	p := c.Contexts[0]
	if p.Name != "prod" || p.Cluster != "prod2" || !slices.Equal(p.Endpoints, []string{"a:7443", "b:7443"}) ||
		p.CA != filepath.Join(dir, "ca.crt") || !filepath.IsAbs(p.Cert) || !strings.HasSuffix(p.Key, "admin.key") {
		t.Errorf("context = %+v", p)
	}
	st, err := os.Stat(config)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600", st.Mode().Perm())
	}
}

func TestGetContextsTable(t *testing.T) {
	t.Parallel()
	config := filepath.Join(t.TempDir(), "config.yaml")
	c := &Config{CurrentContext: "dev", Contexts: []Context{
		{Name: "prod", Cluster: "prod", Endpoints: []string{"a:1", "b:1"}},
		{Name: "dev", Cluster: "dev", Socket: "/run/corral/corrald.sock"},
	}}
	if err := c.save(config); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "", config, "config", "get-contexts")
	want := "CURRENT  NAME  CLUSTER  ENDPOINTS  SOCKET\n" +
		"-        prod  prod     a:1,b:1    -\n" +
		"*        dev   dev      -          /run/corral/corrald.sock\n"
	if r.code != 0 || r.out != want {
		t.Errorf("get-contexts (code %d, err %q):\n%s\nwant:\n%s", r.code, r.errOut, r.out, want)
	}
}

func TestLoadConfigRejectsUnknownFields(t *testing.T) {
	t.Parallel()
	config := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(config, []byte("current-context: a\ncontexts:\n- name: a\n  endpoint: x:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(config); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("loadConfig = %v, want an error naming the unknown field", err)
	}
}

func TestConnOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	for _, f := range []string{"ca.crt", "admin.crt", "admin.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := &Config{CurrentContext: "prod", Contexts: []Context{
		// Relative paths are relative to the config file.
		{Name: "prod", Cluster: "prod", Endpoints: []string{"a:1"}, CA: "ca.crt", Cert: "admin.crt", Key: filepath.Join(dir, "admin.key")},
		{Name: "local", Cluster: "dev", Socket: "/run/local.sock"},
		{Name: "nocreds", Cluster: "prod", Endpoints: []string{"a:1"}},
	}}
	if err := c.save(config); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                 string
		a                    app
		local                bool
		wantSocket, wantClus string
		wantEndpoints        []string
		wantErr              bool
	}{
		{name: "current context", wantClus: "prod", wantEndpoints: []string{"a:1"}},
		{name: "--endpoint overrides", a: app{endpoints: []string{"z:9"}}, wantClus: "prod", wantEndpoints: []string{"z:9"}},
		{name: "--cluster overrides", a: app{cluster: "other"}, wantClus: "other", wantEndpoints: []string{"a:1"}},
		{name: "--socket wins", a: app{socket: "/s"}, wantClus: "prod", wantSocket: "/s"},
		{name: "local command", local: true, wantClus: "prod", wantSocket: client.DefaultSocket},
		{name: "socket context", a: app{contextName: "local"}, wantClus: "dev", wantSocket: "/run/local.sock"},
		{name: "unknown context", a: app{contextName: "nope"}, wantErr: true},
		{name: "no credentials", a: app{contextName: "nocreds"}, wantErr: true},
	} {
		a := tc.a
		a.configPath = config
		o, err := a.connOptions(tc.local)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%s: no error", tc.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if o.Socket != tc.wantSocket || o.Cluster != tc.wantClus || !slices.Equal(o.Endpoints, tc.wantEndpoints) {
			t.Errorf("%s: got socket %q cluster %q endpoints %v", tc.name, o.Socket, o.Cluster, o.Endpoints)
		}
		if o.Socket == "" && (string(o.CACert) != "ca.crt" || string(o.Cert) != "admin.crt" || string(o.Key) != "admin.key") {
			t.Errorf("%s: credentials not read: %q %q %q", tc.name, o.CACert, o.Cert, o.Key)
		}
	}
}

func TestNoConfigDefaultsToSocket(t *testing.T) {
	t.Parallel()
	a := app{configPath: filepath.Join(t.TempDir(), "missing.yaml")}
	o, err := a.connOptions(false)
	if err != nil || o.Socket != client.DefaultSocket {
		t.Errorf("connOptions = %+v, %v; want the default socket", o, err)
	}
}
