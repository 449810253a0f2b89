package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

// table is what commands render by default.
type table struct {
	header []string
	rows   [][]string
}

func newTable(header ...string) *table { return &table{header: header} }

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

// write aligns columns with two spaces; empty cells show as "-" so columns
// stay parseable with awk.
func (t *table) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.header, "\t"))
	for _, r := range t.rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

var jsonOpts = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitUnpopulated: true}

// renderer is the table-format rendering of an answer.
type renderer interface{ write(io.Writer) error }

// renderFunc renders free-form text (cluster status, dry runs).
type renderFunc func(io.Writer) error

func (f renderFunc) write(w io.Writer) error { return f(w) }

// print renders a message in the chosen format; in table format, t is
// written, or the message as YAML when t is nil (the "show" commands).
func (a *app) print(msg proto.Message, t renderer) error {
	if a.output == "table" && t != nil {
		return t.write(a.out)
	}
	data, err := jsonOpts.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return a.writeJSONOrYAML(data)
}

// yaml writes msg as YAML to w, for table renderings that embed details.
func (a *app) yaml(w io.Writer, msg proto.Message) error {
	data, err := jsonOpts.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	y, err := yaml.JSONToYAML(data)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = w.Write(y)
	return err
}

// printAny is print for values that are not protobuf messages.
func (a *app) printAny(v any, t renderer) error {
	if a.output == "table" && t != nil {
		return t.write(a.out)
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return a.writeJSONOrYAML(data)
}

func (a *app) writeJSONOrYAML(data []byte) error {
	if a.output == "json" {
		_, err := fmt.Fprintf(a.out, "%s\n", data)
		return err
	}
	y, err := yaml.JSONToYAML(data)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = a.out.Write(y)
	return err
}

// printLine renders one message of a stream (event --follow): one compact
// JSON object per line in json format.
func (a *app) printLine(msg proto.Message, t *table) error {
	switch a.output {
	case "json":
		data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.out, "%s\n", data)
		return err
	case "yaml":
		if _, err := io.WriteString(a.out, "---\n"); err != nil {
			return err
		}
		return a.print(msg, nil)
	}
	for _, r := range t.rows {
		if _, err := fmt.Fprintln(a.out, strings.Join(r, "  ")); err != nil {
			return err
		}
	}
	return nil
}

// enum renders an enum value without its prefix, in lower case:
// VM_STATE_RUNNING → running; the zero value renders as "".
func enum(v interface{ String() string }, prefix string) string {
	s := strings.TrimPrefix(v.String(), prefix)
	if s == "UNSPECIFIED" {
		return ""
	}
	return strings.ToLower(s)
}

func role(r pb.NodeRole) string       { return enum(r, "NODE_ROLE_") }
func health(h pb.NodeHealth) string   { return enum(h, "NODE_HEALTH_") }
func vmState(s pb.VMState) string     { return enum(s, "VM_STATE_") }
func power(p pb.PowerState) string    { return enum(p, "POWER_STATE_") }
func taskState(s pb.TaskState) string { return enum(s, "TASK_STATE_") }

func haMode(m pb.HAMode) string {
	if m == pb.HAMode_HA_MODE_RESTART {
		return "restart"
	}
	return "off"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// flag renders a boolean that is usually false: only "yes" stands out.
func flag(b bool) string {
	if b {
		return "yes"
	}
	return ""
}

// Binary units, as disks and memory are counted.
const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
	tib = 1 << 40
)

// humanBytes renders a size with one decimal in the largest binary unit
// that keeps it at least 1.
func humanBytes(n uint64) string {
	units := []struct {
		size uint64
		name string
	}{{tib, "TiB"}, {gib, "GiB"}, {mib, "MiB"}, {kib, "KiB"}}
	for _, u := range units {
		if n >= u.size {
			v := float64(n) / float64(u.size)
			if n%u.size == 0 {
				return fmt.Sprintf("%d %s", n/u.size, u.name)
			}
			return fmt.Sprintf("%.1f %s", v, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}

func humanMiB(m int64) string {
	if m <= 0 {
		return ""
	}
	return humanBytes(uint64(m) * mib)
}

// parseSize reads a size in bytes: a plain number, or one with a binary
// unit K, M, G or T (optionally followed by "i" and/or "B": 10G = 10GiB =
// 10 × 2^30). Fractions are allowed with a unit (1.5G).
func parseSize(s string) (uint64, error) {
	return parseSizeUnit(s, 1)
}

// parseMiB reads a memory size in MiB: a plain number is MiB, a number
// with a unit must be a whole number of MiB (1G = 1024).
func parseMiB(s string) (int64, error) {
	b, err := parseSizeUnit(s, mib)
	if err != nil {
		return 0, err
	}
	if b%mib != 0 {
		return 0, fmt.Errorf("size %q is not a whole number of MiB", s)
	}
	return int64(b / mib), nil
}

func parseSizeUnit(in string, plain uint64) (uint64, error) {
	s := strings.TrimSpace(in)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.ToUpper(strings.TrimSpace(s[i:]))
	var mult uint64
	switch unit {
	case "":
		mult = plain
	case "B":
		mult = 1
	case "K", "KB", "KI", "KIB":
		mult = kib
	case "M", "MB", "MI", "MIB":
		mult = mib
	case "G", "GB", "GI", "GIB":
		mult = gib
	case "T", "TB", "TI", "TIB":
		mult = tib
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use K, M, G or T)", in, unit)
	}
	if n, err := strconv.ParseUint(num, 10, 64); err == nil {
		if n > math.MaxUint64/mult {
			return 0, fmt.Errorf("size %q is too large", in)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("invalid size %q: use a number with an optional unit K, M, G or T", in)
	}
	v := f * float64(mult)
	if v >= math.MaxUint64 {
		return 0, fmt.Errorf("size %q is too large", in)
	}
	return uint64(math.Round(v)), nil
}

// age renders how long ago a Unix-nanosecond time was, kubectl-style.
func (a *app) age(unixNano int64) string {
	if unixNano == 0 {
		return ""
	}
	return shortDuration(a.now().Sub(time.Unix(0, unixNano)))
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func timestamp(unixNano int64) string {
	if unixNano == 0 {
		return ""
	}
	return time.Unix(0, unixNano).UTC().Format(time.RFC3339)
}

func msDuration(ms int64) string {
	if ms <= 0 {
		return ""
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressLine is the one-line summary of a task shown while waiting.
func progressLine(t *pb.Task) string {
	s := fmt.Sprintf("%s %s: %s %3.0f%%", t.GetKind(), t.GetTarget(), taskState(t.GetState()), 100*t.GetProgress())
	if m := t.GetMessage(); m != "" {
		s += " " + m
	}
	return s
}

// finishTask waits for a task unless noWait, showing progress on stderr,
// and then renders the final task. Every command that starts a task
// goes through here.
func (a *app) finishTask(ctx context.Context, c *client.Client, cluster string, t *pb.Task, noWait bool) error {
	if t == nil {
		return nil
	}
	if noWait {
		if a.output != "table" {
			return a.print(t, nil)
		}
		_, err := fmt.Fprintf(a.out, "Task %s started (%s %s)\n", t.GetId(), t.GetKind(), t.GetTarget())
		return err
	}
	// On a terminal the progress line is redrawn in place; elsewhere
	// (logs, tests) each change is a line of its own.
	tty := isTerminal(a.errOut)
	var last string
	final, err := c.WaitTask(ctx, cluster, t.GetId(), func(t *pb.Task) {
		if line := progressLine(t); line != last {
			last = line
			if tty {
				fmt.Fprintf(a.errOut, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(a.errOut, line)
			}
		}
	})
	if tty && last != "" {
		fmt.Fprintln(a.errOut)
	}
	if err != nil {
		return err
	}
	if a.output != "table" {
		return a.print(final, nil)
	}
	_, err = fmt.Fprintf(a.out, "Task %s succeeded (%s %s)\n", final.GetId(), final.GetKind(), final.GetTarget())
	return err
}
