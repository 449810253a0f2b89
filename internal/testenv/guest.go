package testenv

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// GuestOptions customises the guest's /init.
type GuestOptions struct {
	// InitScript holds extra sh lines run by /init after the mounts, the
	// network settings and the GUEST-READY line, with stdout and stderr on
	// /dev/ttyS0. Empty means the default: print "count N" every second.
	InitScript string
}

// DefaultInitScript is what the guest runs when GuestOptions.InitScript is
// empty.
const DefaultInitScript = `i=0; while :; do echo "count $i"; i=$((i+1)); sleep 1; done`

//go:embed guest_init.sh
var guestInit string

// GuestModules are the kernel modules the initramfs carries (with their
// dependencies) so that virtio disks and NICs work.
var GuestModules = []string{"virtio_pci", "virtio_net", "virtio_blk"}

// BuildGuest returns the newest /boot/vmlinuz-*-cloud-amd64 and builds an
// initramfs (busybox-static, the virtio modules of that kernel, corral's
// /init) as dir/initrd.cpio.gz. Boot it with "console=ttyS0" on the kernel
// command line; see the package doc for corral.* settings.
func BuildGuest(dir string, opts GuestOptions) (kernel, initrd string, err error) {
	kernel, version, err := newestCloudKernel()
	if err != nil {
		return "", "", err
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", "", fmt.Errorf("build guest: %w (install busybox-static)", err)
	}
	modDir := filepath.Join("/lib/modules", version)
	mods, err := moduleOrder(modDir, GuestModules)
	if err != nil {
		return "", "", fmt.Errorf("build guest: %w", err)
	}
	script := opts.InitScript
	if strings.TrimSpace(script) == "" {
		script = DefaultInitScript
	}

	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	w := &cpioWriter{w: gz}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "lib", "lib/modules"} {
		w.dir(d)
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	w.node("dev/console", 0o020600, 5, 1)
	w.file("bin/busybox", 0o755, busybox)
	w.symlink("bin/sh", "busybox")
	w.file("init", 0o755, []byte(guestInit))
	w.file("etc/corral-init.sh", 0o644, []byte(script+"\n"))
	var names []string
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			return "", "", fmt.Errorf("build guest: %w", err)
		}
		name := filepath.Base(m)
		w.file("lib/modules/"+name, 0o644, b)
		names = append(names, name)
	}
	w.file("etc/corral-modules", 0o644, []byte(strings.Join(names, "\n")+"\n"))
	w.trailer()
	if w.err != nil {
		return "", "", fmt.Errorf("build guest: write cpio: %w", w.err)
	}
	if err := gz.Close(); err != nil {
		return "", "", fmt.Errorf("build guest: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("build guest: %w", err)
	}
	initrd = filepath.Join(dir, "initrd.cpio.gz")
	if err := os.WriteFile(initrd, buf.Bytes(), 0o644); err != nil {
		return "", "", fmt.Errorf("build guest: %w", err)
	}
	return kernel, initrd, nil
}

var cloudKernel = regexp.MustCompile(`^/boot/vmlinuz-(.*-cloud-amd64)$`)

// newestCloudKernel picks the highest version among the cloud kernels.
func newestCloudKernel() (path, version string, err error) {
	files, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
	var best []int
	for _, f := range files {
		m := cloudKernel.FindStringSubmatch(f)
		if m == nil {
			continue
		}
		v := versionNumbers(m[1])
		if path == "" || lessVersion(best, v) {
			path, version, best = f, m[1], v
		}
	}
	if path == "" {
		return "", "", fmt.Errorf("no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64 (scripts/install-deps.sh)")
	}
	return path, version, nil
}

func versionNumbers(s string) []int {
	var out []int
	for _, f := range regexp.MustCompile(`\d+`).FindAllString(s, -1) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

func lessVersion(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}

// moduleOrder resolves the wanted modules and their dependencies from
// modules.dep into a load order (dependencies first). Modules built into
// the kernel are absent from modules.dep and need no loading.
func moduleOrder(modDir string, want []string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep of the guest kernel: %w", err)
	}
	deps := map[string][]string{} // path -> dependency paths
	byName := map[string]string{} // module name -> path
	for _, line := range strings.Split(string(b), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(filepath.Base(mod), ".ko")
		byName[name] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		d := deps[mod]
		// modules.dep lists the deepest dependencies last.
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, mod)
	}
	for _, name := range want {
		if mod, ok := byName[name]; ok {
			visit(mod)
		}
	}
	return order, nil
}

// cpioWriter writes the "newc" format the kernel unpacks as initramfs.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rmaj, rmin int) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	pad4(&b, b.Len())
	b.Write(data)
	pad4(&b, len(data))
	_, c.err = c.w.Write(b.Bytes())
}

func pad4(b *bytes.Buffer, n int) {
	for n%4 != 0 {
		b.WriteByte(0)
		n++
	}
}

func (c *cpioWriter) dir(name string)                         { c.entry(name, 0o040755, nil, 0, 0) }
func (c *cpioWriter) file(name string, perm uint32, d []byte) { c.entry(name, 0o100000|perm, d, 0, 0) }
func (c *cpioWriter) symlink(name, target string)             { c.entry(name, 0o120777, []byte(target), 0, 0) }
func (c *cpioWriter) node(name string, mode uint32, maj, min int) {
	c.entry(name, mode, nil, maj, min)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, nil, 0, 0) }
