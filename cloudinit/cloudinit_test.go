package cloudinit

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// readSeed extracts one file from a seed image with mtools.
func readSeed(t *testing.T, img, name string) ([]byte, bool) {
	t.Helper()
	cmd := exec.Command("mcopy", "-n", "-i", img, "::"+name, "-")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.Output()
	if err != nil {
		return nil, false
	}
	return out, true
}

func unmarshal(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("YAML %s: %v", b, err)
	}
	return m
}

func TestBuildSeed(t *testing.T) {
	t.Parallel()
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@minet: laptop #1"
	tests := []struct {
		name    string
		cfg     Config
		network map[string]any // expected network-config, nil for none
	}{
		{
			name: "static",
			cfg: Config{
				InstanceID: "0b5a-vm101",
				Hostname:   "web-1",
				Users:      []User{{Name: "admin", SSHAuthorizedKeys: []string{key}, Password: "p#ss: word", Sudo: true}},
				Network: &Network{Interfaces: []Interface{{
					Name: "eth0", MAC: "52:54:00:AB:CD:EF",
					Addresses: []string{"10.0.0.5/24", "2001:db8::5/64"}, Gateway4: "10.0.0.1", Gateway6: "2001:db8::1",
					Nameservers: []string{"10.0.0.53"}, Search: []string{"minet.net"},
				}}},
			},
			network: map[string]any{
				"version": float64(2),
				"ethernets": map[string]any{"eth0": map[string]any{
					"match":     map[string]any{"macaddress": "52:54:00:ab:cd:ef"},
					"set-name":  "eth0",
					"dhcp4":     false,
					"dhcp6":     false,
					"addresses": []any{"10.0.0.5/24", "2001:db8::5/64"},
					"routes": []any{
						map[string]any{"to": "0.0.0.0/0", "via": "10.0.0.1"},
						map[string]any{"to": "::/0", "via": "2001:db8::1"},
					},
					"nameservers": map[string]any{"addresses": []any{"10.0.0.53"}, "search": []any{"minet.net"}},
				}},
			},
		},
		{
			name: "dhcp, no password",
			cfg: Config{
				InstanceID: "vm102", Hostname: "db",
				Users:   []User{{Name: "ops", SSHAuthorizedKeys: []string{key}}},
				Network: &Network{Interfaces: []Interface{{Name: "ens3", DHCP: true}}},
			},
			network: map[string]any{
				"version":   float64(2),
				"ethernets": map[string]any{"ens3": map[string]any{"dhcp4": true, "dhcp6": false}},
			},
		},
		{
			name: "no network",
			cfg:  Config{InstanceID: "vm103", Hostname: "bare"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			img := filepath.Join(t.TempDir(), "seed.img")
			if err := BuildSeed(img, tt.cfg); err != nil {
				t.Fatal(err)
			}
			label, err := exec.Command("blkid", "-o", "value", "-s", "LABEL", img).Output()
			if err != nil {
				t.Fatalf("blkid: %v", err)
			}
			if got := strings.TrimSpace(string(label)); !strings.EqualFold(got, Label) {
				t.Errorf("label %q, want %q", got, Label)
			}
			typ, _ := exec.Command("blkid", "-o", "value", "-s", "TYPE", img).Output()
			if strings.TrimSpace(string(typ)) != "vfat" {
				t.Errorf("filesystem type %q, want vfat", typ)
			}

			md, ok := readSeed(t, img, "meta-data")
			if !ok {
				t.Fatal("no meta-data")
			}
			if m := unmarshal(t, md); m["instance-id"] != tt.cfg.InstanceID || m["local-hostname"] != tt.cfg.Hostname {
				t.Errorf("meta-data = %v", m)
			}

			ud, ok := readSeed(t, img, "user-data")
			if !ok {
				t.Fatal("no user-data")
			}
			if !strings.HasPrefix(string(ud), "#cloud-config\n") {
				t.Errorf("user-data does not start with #cloud-config: %q", ud)
			}
			u := unmarshal(t, ud)
			if u["hostname"] != tt.cfg.Hostname {
				t.Errorf("hostname %v, want %s", u["hostname"], tt.cfg.Hostname)
			}
			users, _ := u["users"].([]any)
			if len(tt.cfg.Users) > 0 && len(users) != len(tt.cfg.Users)+1 {
				t.Fatalf("users = %v", users)
			}
			for i, want := range tt.cfg.Users {
				got := users[i+1].(map[string]any)
				if got["name"] != want.Name {
					t.Errorf("user %d name %v, want %s", i, got["name"], want.Name)
				}
				keys := got["ssh_authorized_keys"].([]any)
				if len(keys) != 1 || keys[0] != key {
					t.Errorf("user %s keys %v", want.Name, keys)
				}
				if got["lock_passwd"] != (want.Password == "") {
					t.Errorf("user %s lock_passwd %v", want.Name, got["lock_passwd"])
				}
				if want.Password != "" && got["plain_text_passwd"] != want.Password {
					t.Errorf("user %s password %v, want %q", want.Name, got["plain_text_passwd"], want.Password)
				}
				if want.Sudo != (got["sudo"] != nil) {
					t.Errorf("user %s sudo %v", want.Name, got["sudo"])
				}
			}

			nc, ok := readSeed(t, img, "network-config")
			if tt.network == nil {
				if ok {
					t.Errorf("unexpected network-config %s", nc)
				}
				return
			}
			if !ok {
				t.Fatal("no network-config")
			}
			if got := unmarshal(t, nc); !reflect.DeepEqual(got, tt.network) {
				t.Errorf("network-config\n got %v\nwant %v", got, tt.network)
			}
		})
	}
}

func TestBuildSeedReplaces(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "seed.img")
	for _, host := range []string{"first", "second"} {
		if err := BuildSeed(img, Config{InstanceID: "i", Hostname: host}); err != nil {
			t.Fatal(err)
		}
	}
	md, _ := readSeed(t, img, "meta-data")
	if m := unmarshal(t, md); m["local-hostname"] != "second" {
		t.Errorf("rebuilt seed has %v", m)
	}
	ents, _ := os.ReadDir(filepath.Dir(img))
	if len(ents) != 1 {
		t.Errorf("work files left next to the seed: %v", ents)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Config{InstanceID: "i", Hostname: "h"}
	nic := func(i Interface) Config {
		c := ok
		c.Network = &Network{Interfaces: []Interface{i}}
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		bad  string // substring of the error, "" if valid
	}{
		{"minimal", ok, ""},
		{"no instance id", Config{Hostname: "h"}, "instance id"},
		{"bad hostname", Config{InstanceID: "i", Hostname: "web_1.example"}, "hostname"},
		{"bad user", Config{InstanceID: "i", Hostname: "h", Users: []User{{Name: "Root Admin"}}}, "user name"},
		{"multi-line key", Config{InstanceID: "i", Hostname: "h", Users: []User{{Name: "a", SSHAuthorizedKeys: []string{"ssh-ed25519 AAA\nssh-rsa BBB"}}}}, "SSH key"},
		{"bad cidr", nic(Interface{Name: "eth0", Addresses: []string{"10.0.0.5"}}), "CIDR"},
		{"no address", nic(Interface{Name: "eth0"}), "neither DHCP"},
		{"v6 gateway4", nic(Interface{Name: "eth0", Addresses: []string{"10.0.0.5/24"}, Gateway4: "2001:db8::1"}), "IPv4"},
		{"bad mac", nic(Interface{Name: "eth0", DHCP: true, MAC: "52:54:00:zz:00:01"}), "MAC"},
		{"bad ifname", nic(Interface{Name: "eth0; rm", DHCP: true}), "interface name"},
		{"bad dns", nic(Interface{Name: "eth0", DHCP: true, Nameservers: []string{"dns.example"}}), "nameserver"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		switch {
		case tt.bad == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.bad != "" && (err == nil || !strings.Contains(err.Error(), tt.bad)):
			t.Errorf("%s: error %v, want one about %q", tt.name, err, tt.bad)
		}
		if tt.bad != "" {
			img := filepath.Join(t.TempDir(), "seed.img")
			if BuildSeed(img, tt.cfg) == nil {
				t.Errorf("%s: BuildSeed accepted an invalid config", tt.name)
			}
		}
	}
}
