// Package storage defines the volume interface through which a node agent
// manages VM disks, whatever holds them. Each backend lives in its own
// package: storage/dir keeps qcow2 files in a local directory (not shared:
// a VM on it cannot fail over), storage/rbd keeps images in a Ceph pool
// (shared: any node can open them, after fencing the previous owner).
//
// The package knows nothing of Raft or the API; callers pass plain names
// and sizes and receive typed errors they can test with errors.Is.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// Formats of a volume's content as the hypervisor must read it.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// Volume describes one stored disk.
type Volume struct {
	Name      string
	SizeBytes uint64
	Format    string // FormatRaw or FormatQCOW2
	// Parent is what a linked clone still reads from: "image@snap" on rbd,
	// the backing file's volume name on dir. Empty for independent volumes.
	Parent    string
	Snapshots []string
}

// Disk is what the agent turns into a libvirt <disk>: either a local File
// or an RBD source.
type Disk struct {
	File   string
	Format string
	RBD    *RBDSource
}

// RBDSource locates an RBD image for QEMU. The cephx key is not here: the
// agent hands it to libvirt as a secret.
type RBDSource struct {
	Pool     string
	Image    string
	Monitors []string // "IP:port"
	User     string   // without the "client." prefix
}

// Backend manages the volumes of one storage pool.
type Backend interface {
	// Create makes an empty volume of size bytes.
	Create(ctx context.Context, name string, size uint64) (Volume, error)
	// Delete removes a volume and its snapshots. ErrInUse if it has clones
	// or is open by a VM, ErrNotFound if absent.
	Delete(ctx context.Context, name string) error
	// Resize grows a volume; a smaller size gives ErrShrink.
	Resize(ctx context.Context, name string, size uint64) error
	Snapshot(ctx context.Context, name, snap string) error
	Rollback(ctx context.Context, name, snap string) error
	DeleteSnapshot(ctx context.Context, name, snap string) error
	// Clone makes dst a linked clone of src at snap: it shares src's data
	// and stores only what changes.
	Clone(ctx context.Context, src, snap, dst string) (Volume, error)
	// Copy makes dst a full, independent copy of src's current content.
	// progress, if not nil, is called from the copying goroutine.
	Copy(ctx context.Context, src, dst string, progress func(done, total uint64)) (Volume, error)
	// Import writes a raw stream of exactly size bytes into a new volume;
	// on any error the volume is removed.
	Import(ctx context.Context, name string, r io.Reader, size uint64, progress func(done, total uint64)) (Volume, error)
	Get(ctx context.Context, name string) (Volume, error)
	List(ctx context.Context) ([]Volume, error)
	// Disk says how a hypervisor reaches the volume.
	Disk(name string) Disk
	// Shared reports whether every node sees the same volumes, so a VM
	// can be restarted or migrated elsewhere.
	Shared() bool
	Close() error
}

// Sentinel errors. Backends wrap them with the volume's name and a hint.
var (
	ErrNotFound    = errors.New("volume not found")
	ErrExists      = errors.New("volume already exists")
	ErrInUse       = errors.New("volume in use")
	ErrShrink      = errors.New("volumes can only grow")
	ErrNoSpace     = errors.New("not enough space in the storage pool")
	ErrUnreachable = errors.New("storage unreachable")
	ErrAuth        = errors.New("storage authentication refused")
	// ErrFenced means the cluster has blocklisted this client: another
	// node may own its VMs now, so it must stop writing.
	ErrFenced      = errors.New("this client is fenced (blocklisted) by the storage cluster")
	ErrInvalidName = errors.New("invalid volume or snapshot name")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// MaxNameLen bounds names so that they fit in file names and RBD object
// prefixes with room to spare.
const MaxNameLen = 96

// ValidateName accepts names usable as both a file name and an RBD image
// or snapshot name: letters, digits, '.', '_', '-', not starting with a
// punctuation character, and no "@" or "/" that would change their meaning.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %q is longer than %d characters", ErrInvalidName, name, MaxNameLen)
	case !nameRE.MatchString(name):
		return fmt.Errorf("%w: %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}
