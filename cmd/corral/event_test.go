package main

import (
	"strings"
	"testing"
)

func TestFixedRowAligns(t *testing.T) {
	head := fixedRow([]string{"INDEX", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "MESSAGE"}, eventWidths)
	rows := []string{
		fixedRow([]string{"7", "2026-12-07T15:04:12Z", "ha", "ha.fence", "n2", "ok", "blocklisted 10.0.0.2"}, eventWidths),
		fixedRow([]string{"12345", "2026-12-07T15:04:13Z", "admin:alice", "vm.create", "web", "", "on atlantis"}, eventWidths),
	}
	col := func(line, word string) int { return strings.Index(line, word) }
	for _, r := range rows {
		for _, c := range []struct{ head, cell string }{{"ACTION", "ha.fence"}, {"MESSAGE", "blocklisted"}} {
			if strings.Contains(r, c.cell) && col(r, c.cell) != col(head, c.head) {
				t.Errorf("%q starts at %d, header %q at %d:\n%s\n%s", c.cell, col(r, c.cell), c.head, col(head, c.head), head, r)
			}
		}
	}
	if col(rows[0], "ha.fence") != col(rows[1], "vm.create") || col(rows[0], "blocklisted") != col(rows[1], "on atlantis") {
		t.Errorf("rows not aligned:\n%s\n%s\n%s", head, rows[0], rows[1])
	}
	if !strings.Contains(rows[1], "  -  ") {
		t.Errorf("empty cell not shown as '-': %q", rows[1])
	}
}
