package raftstore

import (
	"regexp"

	"github.com/minet/corral/errdefs"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName checks an object name: a DNS label (lower case letters, digits
// and dashes, 1–63 characters, no leading or trailing dash), so names work
// as hostnames, libvirt domain names and Ceph image names alike.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return errdefs.Invalid("invalid %s name %q: use 1-63 lower-case letters, digits or dashes, starting and ending with a letter or digit", kind, name)
	}
	return nil
}
