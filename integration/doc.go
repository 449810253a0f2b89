// Package integration holds end-to-end tests: real corrald processes in
// network namespaces, talking TLS over veth, with real libvirtd, Ceph and
// Open vSwitch started by internal/testenv. They run in `make test`.
package integration
