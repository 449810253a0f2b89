// Package cloudinit builds the NoCloud seed a VM reads at first boot: a
// small vfat image labelled "cidata" holding meta-data, user-data
// (#cloud-config: hostname, users, SSH keys, password) and network-config
// (version 2, static or DHCP). The node agent attaches it as a second disk
// next to a cloned template, so guests need no metadata server.
//
// The image is made with mkfs.vfat (dosfstools) and filled with mcopy
// (mtools): no loop mount, so it works without privileges or udev.
package cloudinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Label is the filesystem label cloud-init's NoCloud source looks for.
const Label = "cidata"

// toolTimeout bounds each mkfs.vfat/mcopy run; they take milliseconds.
const toolTimeout = 30 * time.Second

// Config is what a VM learns at first boot.
type Config struct {
	// InstanceID changes when the VM should be treated as new (cloud-init
	// reruns its per-instance modules); typically the VM's UUID.
	InstanceID string
	Hostname   string
	Users      []User
	// Network, when nil, lets the guest's own defaults apply (usually DHCP
	// on the first interface).
	Network *Network
}

// User is an account created in the guest.
type User struct {
	Name              string
	SSHAuthorizedKeys []string
	// PasswordHash is a crypt(3) hash (e.g. from `mkpasswd -m sha-512`);
	// preferred over Password, which is stored in clear in the seed.
	PasswordHash string
	Password     string
	// Sudo grants passwordless sudo.
	Sudo bool
}

// Network is a netplan-style version 2 network configuration.
type Network struct {
	Interfaces []Interface
}

// Interface configures one guest NIC, found by MAC address.
type Interface struct {
	// Name is the name given to the NIC in the guest (e.g. "eth0").
	Name string
	MAC  string
	DHCP bool
	// Addresses in CIDR form ("10.0.0.5/24"), used when DHCP is false.
	Addresses   []string
	Gateway4    string
	Gateway6    string
	Nameservers []string
	Search      []string
	MTU         int
}

var hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
var userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
var ifnameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)

// Validate reports the first field a guest could not use.
func (c Config) Validate() error {
	if c.InstanceID == "" {
		return errors.New("cloud-init: instance id is empty")
	}
	if !hostnameRE.MatchString(c.Hostname) {
		return fmt.Errorf("cloud-init: hostname %q: use letters, digits and '-', at most 63 characters", c.Hostname)
	}
	for _, u := range c.Users {
		if !userRE.MatchString(u.Name) {
			return fmt.Errorf("cloud-init: user name %q: use lowercase letters, digits, '_' and '-'", u.Name)
		}
		for _, k := range u.SSHAuthorizedKeys {
			if strings.ContainsAny(k, "\r\n") || len(strings.Fields(k)) < 2 {
				return fmt.Errorf("cloud-init: user %s: SSH key %.20q is not one \"type base64 [comment]\" line", u.Name, k)
			}
		}
	}
	if c.Network == nil {
		return nil
	}
	for _, i := range c.Network.Interfaces {
		if !ifnameRE.MatchString(i.Name) {
			return fmt.Errorf("cloud-init: interface name %q is not a valid Linux interface name", i.Name)
		}
		if i.MAC != "" {
			if _, err := parseMAC(i.MAC); err != nil {
				return fmt.Errorf("cloud-init: interface %s: %w", i.Name, err)
			}
		}
		if !i.DHCP && len(i.Addresses) == 0 {
			return fmt.Errorf("cloud-init: interface %s: neither DHCP nor a static address", i.Name)
		}
		for _, a := range i.Addresses {
			if _, err := netip.ParsePrefix(a); err != nil {
				return fmt.Errorf("cloud-init: interface %s: address %q: want CIDR like 10.0.0.5/24", i.Name, a)
			}
		}
		for _, g := range []struct {
			addr string
			v4   bool
		}{{i.Gateway4, true}, {i.Gateway6, false}} {
			if g.addr == "" {
				continue
			}
			ip, err := netip.ParseAddr(g.addr)
			if err != nil || ip.Is4() != g.v4 {
				return fmt.Errorf("cloud-init: interface %s: gateway %q is not an IPv%s address", i.Name, g.addr, map[bool]string{true: "4", false: "6"}[g.v4])
			}
		}
		for _, ns := range i.Nameservers {
			if _, err := netip.ParseAddr(ns); err != nil {
				return fmt.Errorf("cloud-init: interface %s: nameserver %q is not an IP address", i.Name, ns)
			}
		}
	}
	return nil
}

func parseMAC(s string) (string, error) {
	parts := strings.Split(strings.ToLower(s), ":")
	if len(parts) != 6 {
		return "", fmt.Errorf("MAC %q: want six hex bytes separated by ':'", s)
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 16, 8); err != nil || len(p) != 2 {
			return "", fmt.Errorf("MAC %q: want six hex bytes separated by ':'", s)
		}
	}
	return strings.Join(parts, ":"), nil
}

// The YAML documents, as structs so that values are always quoted
// correctly (a key with ": " or a password with "#" stays one string).
type metaData struct {
	InstanceID    string `json:"instance-id"`
	LocalHostname string `json:"local-hostname"`
}

type cloudConfig struct {
	Hostname         string       `json:"hostname"`
	PreserveHostname bool         `json:"preserve_hostname"`
	ManageEtcHosts   bool         `json:"manage_etc_hosts"`
	SSHPwauth        *bool        `json:"ssh_pwauth,omitempty"`
	Users            []any        `json:"users,omitempty"`
	Chpasswd         *chpasswdCfg `json:"chpasswd,omitempty"`
}

type chpasswdCfg struct {
	Expire bool `json:"expire"`
}

type userEntry struct {
	Name              string   `json:"name"`
	Shell             string   `json:"shell"`
	Sudo              string   `json:"sudo,omitempty"`
	Groups            string   `json:"groups,omitempty"`
	LockPasswd        bool     `json:"lock_passwd"`
	Passwd            string   `json:"passwd,omitempty"`
	PlainTextPasswd   string   `json:"plain_text_passwd,omitempty"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
}

type networkConfig struct {
	Version   int                 `json:"version"`
	Ethernets map[string]ethernet `json:"ethernets"`
}

type ethernet struct {
	Match       *match       `json:"match,omitempty"`
	SetName     string       `json:"set-name,omitempty"`
	DHCP4       bool         `json:"dhcp4"`
	DHCP6       bool         `json:"dhcp6"`
	Addresses   []string     `json:"addresses,omitempty"`
	Routes      []route      `json:"routes,omitempty"`
	Nameservers *nameservers `json:"nameservers,omitempty"`
	MTU         int          `json:"mtu,omitempty"`
}

type match struct {
	MACAddress string `json:"macaddress"`
}

type route struct {
	To  string `json:"to"`
	Via string `json:"via"`
}

type nameservers struct {
	Addresses []string `json:"addresses,omitempty"`
	Search    []string `json:"search,omitempty"`
}

// Files renders the seed's files: meta-data, user-data and, when a
// network is configured, network-config.
func (c Config) Files() (map[string][]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	md, err := yaml.Marshal(metaData{InstanceID: c.InstanceID, LocalHostname: c.Hostname})
	if err != nil {
		return nil, fmt.Errorf("cloud-init meta-data: %w", err)
	}
	files["meta-data"] = md

	cc := cloudConfig{Hostname: c.Hostname, ManageEtcHosts: true}
	pw := false
	for _, u := range c.Users {
		e := userEntry{
			Name:              u.Name,
			Shell:             "/bin/bash",
			LockPasswd:        u.PasswordHash == "" && u.Password == "",
			Passwd:            u.PasswordHash,
			SSHAuthorizedKeys: u.SSHAuthorizedKeys,
		}
		if u.PasswordHash == "" {
			e.PlainTextPasswd = u.Password
		}
		if !e.LockPasswd {
			pw = true
		}
		if u.Sudo {
			e.Sudo = "ALL=(ALL) NOPASSWD:ALL"
			e.Groups = "sudo"
		}
		cc.Users = append(cc.Users, e)
	}
	if len(cc.Users) > 0 {
		// Keep the image's default user (e.g. "debian") alongside ours.
		cc.Users = append([]any{"default"}, cc.Users...)
	}
	if pw {
		cc.SSHPwauth = &pw
		cc.Chpasswd = &chpasswdCfg{Expire: false}
	}
	ud, err := yaml.Marshal(cc)
	if err != nil {
		return nil, fmt.Errorf("cloud-init user-data: %w", err)
	}
	files["user-data"] = append([]byte("#cloud-config\n"), ud...)

	if c.Network != nil {
		nc := networkConfig{Version: 2, Ethernets: map[string]ethernet{}}
		for _, i := range c.Network.Interfaces {
			e := ethernet{DHCP4: i.DHCP, Addresses: i.Addresses, MTU: i.MTU}
			if i.MAC != "" {
				mac, _ := parseMAC(i.MAC)
				e.Match = &match{MACAddress: mac}
				e.SetName = i.Name
			}
			if !i.DHCP {
				if i.Gateway4 != "" {
					e.Routes = append(e.Routes, route{To: "0.0.0.0/0", Via: i.Gateway4})
				}
				if i.Gateway6 != "" {
					e.Routes = append(e.Routes, route{To: "::/0", Via: i.Gateway6})
				}
			}
			if len(i.Nameservers) > 0 || len(i.Search) > 0 {
				e.Nameservers = &nameservers{Addresses: i.Nameservers, Search: i.Search}
			}
			nc.Ethernets[i.Name] = e
		}
		nw, err := yaml.Marshal(nc)
		if err != nil {
			return nil, fmt.Errorf("cloud-init network-config: %w", err)
		}
		files["network-config"] = nw
	}
	return files, nil
}

// BuildSeed writes the NoCloud seed image for c to path, replacing any
// previous one atomically (a VM being defined never sees half a seed).
func BuildSeed(path string, c Config) error {
	files, err := c.Files()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	work, err := os.MkdirTemp(dir, ".seed-*")
	if err != nil {
		return fmt.Errorf("build seed %s: %w", path, err)
	}
	defer os.RemoveAll(work)

	total := 0
	for _, b := range files {
		total += len(b)
	}
	// 1 MiB plus twice the content leaves room for FAT overhead; tiny
	// either way.
	kib := 1024 + 2*(total/1024+1)
	img := filepath.Join(work, "seed.img")
	if err := run("mkfs.vfat", "-C", "-n", Label, img, strconv.Itoa(kib)); err != nil {
		return fmt.Errorf("build seed %s: %w", path, err)
	}
	args := []string{"-i", img}
	for _, name := range []string{"meta-data", "user-data", "network-config"} {
		b, ok := files[name]
		if !ok {
			continue
		}
		f := filepath.Join(work, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return fmt.Errorf("build seed %s: %w", path, err)
		}
		args = append(args, f)
	}
	args = append(args, "::/")
	if err := run("mcopy", args...); err != nil {
		return fmt.Errorf("build seed %s: %w", path, err)
	}
	if err := os.Rename(img, path); err != nil {
		return fmt.Errorf("build seed %s: %w", path, err)
	}
	return nil
}

func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// mtools refuses some valid images unless told to skip its geometry
	// check.
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s not found: install dosfstools and mtools", name)
		}
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(out.String()))
	}
	return nil
}
