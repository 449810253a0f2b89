package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/minet/corral/proto/corral/v1"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"512", 512, false},
		{"10G", 10 << 30, false},
		{"10GiB", 10 << 30, false},
		{"10 GB", 10 << 30, false},
		{"1.5g", 3 << 29, false},
		{"4k", 4096, false},
		{"2T", 2 << 40, false},
		{"3M", 3 << 20, false},
		{"100B", 100, false},
		{"", 0, true},
		{"G", 0, true},
		{"10X", 0, true},
		{"-1G", 0, true},
		{"1.2.3G", 0, true},
		{"99999999999T", 0, true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseMiB(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"256", 256, false},
		{"1G", 1024, false},
		{"1.5G", 1536, false},
		{"512M", 512, false},
		{"512MiB", 512, false},
		{"1536K", 0, true}, // 1.5 MiB
		{"lots", 0, true},
	} {
		got, err := parseMiB(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseMiB(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[uint64]string{
		0: "0 B", 1023: "1023 B", 1024: "1 KiB", 10 << 30: "10 GiB", 3 << 29: "1.5 GiB", 5 << 40: "5 TiB",
	} {
		if got := humanBytes(in); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestTableWrite(t *testing.T) {
	t.Parallel()
	tb := newTable("NAME", "STATE", "NODE")
	tb.row("web", "running", "atlantis")
	tb.row("database-1", "", "houston")
	var b bytes.Buffer
	if err := tb.write(&b); err != nil {
		t.Fatal(err)
	}
	want := "NAME        STATE    NODE\n" +
		"web         running  atlantis\n" +
		"database-1  -        houston\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestNetStatus(t *testing.T) {
	t.Parallel()
	n := &pb.Network{Status: map[string]*pb.NetworkStatus{
		"discovery": {Error: "no such interface eno9"},
		"atlantis":  {Applied: true, Bridge: "br42"},
		"houston":   {},
	}}
	want := "atlantis:ok discovery:ERR(no such interface eno9) houston:pending"
	if got := netStatus(n); got != want {
		t.Errorf("netStatus = %q, want %q", got, want)
	}
}

func TestShortDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 42 * time.Second: "42s", 5 * time.Minute: "5m", 3 * time.Hour: "3h", 72 * time.Hour: "3d",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestUntilWriter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		chunks []string
		want   bool
	}{
		{[]string{"Debian login: "}, true},
		{[]string{"Debian lo", "gin", ": "}, true},
		{[]string{"l", "o", "g", "i", "n", ":"}, true},
		{[]string{"login", " :"}, false},
		{[]string{"logi", "\nn:"}, false},
	} {
		calls := 0
		var out bytes.Buffer
		u := &untilWriter{w: &out, needle: []byte("login:"), found: func() { calls++ }}
		for _, c := range tc.chunks {
			u.Write([]byte(c))
		}
		if u.matched() != tc.want || (calls == 1) != tc.want {
			t.Errorf("chunks %q: matched %v (found called %d times), want %v", tc.chunks, u.matched(), calls, tc.want)
		}
		if out.String() != strings.Join(tc.chunks, "") {
			t.Errorf("chunks %q: copied %q", tc.chunks, out.String())
		}
	}
}

func TestErrorMessage(t *testing.T) {
	t.Parallel()
	st := status.Error(codes.NotFound, "vm web not found")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{st, "vm web not found"},
		{fmt.Errorf("wait for task t1: %w", st), "wait for task t1: vm web not found"},
		{errors.New("plain"), "plain"},
	} {
		if got := errorMessage(tc.err); got != tc.want {
			t.Errorf("errorMessage(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestParseNICsKeepsMACs(t *testing.T) {
	t.Parallel()
	current := []*pb.NICSpec{{Network: "lan", Mac: "52:54:00:00:00:01"}, {Network: "dmz", Mac: "52:54:00:00:00:02"}}
	got := parseNICs([]string{"dmz", "lan=52:54:00:aa:bb:cc", "new"}, current)
	want := []string{"dmz=52:54:00:00:00:02", "lan=52:54:00:aa:bb:cc", "new="}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i, n := range got {
		if s := n.GetNetwork() + "=" + n.GetMac(); s != want[i] {
			t.Errorf("nic %d = %s, want %s", i, s, want[i])
		}
	}
}
