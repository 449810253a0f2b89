package testenv

import (
	"context"
	"fmt"
	"strings"
)

// FormCluster bootstraps cluster name on members[0] and joins the other
// members, then the witnesses, each with its own single-use token, exactly
// as an admin would with the CLI on each node.
func FormCluster(ctx context.Context, name string, members, witnesses []*Corrald) error {
	if len(members) == 0 {
		return fmt.Errorf("cluster %s needs a member", name)
	}
	first := members[0]
	if out, err := first.CLI(ctx, "cluster", "init", name); err != nil {
		return fmt.Errorf("init %s on %s: %w: %s", name, first.Host.Name, err, out)
	}
	join := func(c *Corrald, witness bool) error {
		args := []string{"--cluster", name, "cluster", "token"}
		if witness {
			args = append(args, "--witness")
		}
		tok, err := first.CLI(ctx, args...)
		if err != nil {
			return fmt.Errorf("token for %s: %w: %s", c.Host.Name, err, tok)
		}
		args = []string{"cluster", "join", name, "--token", strings.TrimSpace(lastLine(tok)), "--peer", first.APIAddr}
		if witness {
			args = append(args, "--witness")
		}
		if out, err := c.CLI(ctx, args...); err != nil {
			return fmt.Errorf("join %s to %s: %w: %s", c.Host.Name, name, err, out)
		}
		return nil
	}
	for _, m := range members[1:] {
		if err := join(m, false); err != nil {
			return err
		}
	}
	for _, w := range witnesses {
		if err := join(w, true); err != nil {
			return err
		}
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
