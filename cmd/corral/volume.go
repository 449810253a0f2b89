package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func (a *app) volumeTable(vols []*pb.Volume) *table {
	t := newTable("POOL", "NAME", "SIZE", "NODE", "TEMPLATE", "PARENT", "VM", "SNAPSHOTS", "READY", "AGE")
	for _, v := range vols {
		ready := yesNo(v.GetReady())
		if v.GetError() != "" {
			ready = "ERR(" + v.GetError() + ")"
		}
		t.row(v.GetPool(), v.GetName(), humanBytes(v.GetSizeBytes()), v.GetNode(), flag(v.GetTemplate()), v.GetParent(),
			v.GetVm(), strings.Join(v.GetSnapshots(), ","), ready, a.age(v.GetCreatedUnixNano()))
	}
	return t
}

// volumeArg validates a POOL/NAME argument at position i.
func volumeArg(i int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := argNames(names...)(cmd, args); err != nil {
			return err
		}
		if _, _, err := splitVolume(args[i]); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func (a *app) volumeCmd() *cobra.Command {
	complete := a.completeNames(listVolumeNames)
	var noWait bool
	addNoWait := func(c *cobra.Command) *cobra.Command {
		c.Flags().BoolVar(&noWait, "no-wait", false, "return once the operation started")
		return c
	}
	// taskCmd makes the commands that name one volume and start a task.
	taskCmd := func(use, short string, args []string, call func(ctx context.Context, c *client.Client, cluster, pool, name string, args []string) (*pb.Task, error)) *cobra.Command {
		return addNoWait(&cobra.Command{
			Use:               use,
			Short:             short,
			Args:              volumeArg(0, args...),
			ValidArgsFunction: complete,
			RunE: func(cmd *cobra.Command, args []string) error {
				pool, name, _ := splitVolume(args[0])
				return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
					t, err := call(ctx, c, cluster, pool, name, args)
					if err != nil {
						return err
					}
					return a.finishTask(ctx, c, cluster, t, noWait)
				})
			},
		})
	}

	var size, node, from string
	var full bool
	create := addNoWait(&cobra.Command{
		Use:   "create POOL/NAME --size SIZE",
		Short: "Create a volume, empty or cloned from a template",
		Args:  volumeArg(0, "POOL/NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, name, _ := splitVolume(args[0])
			var sizeBytes uint64
			if size != "" {
				var err error
				if sizeBytes, err = parseSize(size); err != nil {
					return usageErrorf("--size: %v", err)
				}
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Storage.CreateVolume(ctx, &pb.CreateVolumeRequest{
					Cluster: cluster, Pool: pool, Name: name, SizeBytes: sizeBytes, Node: node, From: from, FullCopy: full,
				})
				if err != nil {
					return err
				}
				if resp.GetTask() != nil {
					return a.finishTask(ctx, c, cluster, resp.GetTask(), noWait)
				}
				return a.print(resp.GetVolume(), a.volumeTable([]*pb.Volume{resp.GetVolume()}))
			})
		},
	})
	create.Flags().StringVar(&size, "size", "", "size, e.g. 10G (default with --from: the template's)")
	create.Flags().StringVar(&node, "node", "", "dir pools: the node that holds the volume")
	create.Flags().StringVar(&from, "from", "", "template POOL/VOLUME to clone")
	create.Flags().BoolVar(&full, "full", false, "full copy instead of a linked clone")
	_ = create.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))

	list := &cobra.Command{
		Use:               "list [POOL]",
		Short:             "List volumes",
		Args:              maxArgs(1),
		ValidArgsFunction: a.completeNames(listPoolNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool := ""
			if len(args) == 1 {
				pool = args[0]
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Storage.ListVolumes(ctx, &pb.ListVolumesRequest{Cluster: cluster, Pool: pool})
				if err != nil {
					return err
				}
				return a.print(resp, a.volumeTable(resp.GetVolumes()))
			})
		},
	}

	var newSize string
	resize := taskCmd("resize POOL/NAME --size SIZE", "Grow a volume", []string{"POOL/NAME"},
		func(ctx context.Context, c *client.Client, cluster, pool, name string, _ []string) (*pb.Task, error) {
			n, err := parseSize(newSize)
			if err != nil {
				return nil, usageErrorf("--size: %v", err)
			}
			resp, err := c.Storage.ResizeVolume(ctx, &pb.ResizeVolumeRequest{Cluster: cluster, Pool: pool, Name: name, SizeBytes: n})
			return resp.GetTask(), err
		})
	resize.Flags().StringVar(&newSize, "size", "", "new size, e.g. 20G")
	_ = resize.MarkFlagRequired("size")

	snapshot := taskCmd("snapshot POOL/NAME SNAPSHOT", "Snapshot a volume", []string{"POOL/NAME", "SNAPSHOT"},
		func(ctx context.Context, c *client.Client, cluster, pool, name string, args []string) (*pb.Task, error) {
			resp, err := c.Storage.SnapshotVolume(ctx, &pb.SnapshotVolumeRequest{Cluster: cluster, Pool: pool, Name: name, Snapshot: args[1]})
			return resp.GetTask(), err
		})
	rollback := taskCmd("rollback POOL/NAME SNAPSHOT", "Roll a volume back to a snapshot", []string{"POOL/NAME", "SNAPSHOT"},
		func(ctx context.Context, c *client.Client, cluster, pool, name string, args []string) (*pb.Task, error) {
			resp, err := c.Storage.RollbackVolume(ctx, &pb.RollbackVolumeRequest{Cluster: cluster, Pool: pool, Name: name, Snapshot: args[1]})
			return resp.GetTask(), err
		})
	del := taskCmd("delete POOL/NAME", "Delete a volume", []string{"POOL/NAME"},
		func(ctx context.Context, c *client.Client, cluster, pool, name string, _ []string) (*pb.Task, error) {
			resp, err := c.Storage.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Cluster: cluster, Pool: pool, Name: name})
			return resp.GetTask(), err
		})

	var unset bool
	template := &cobra.Command{
		Use:               "template POOL/NAME",
		Short:             "Mark a volume as a template (clone source), or not with --unset",
		Args:              volumeArg(0, "POOL/NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, name, _ := splitVolume(args[0])
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Storage.SetTemplate(ctx, &pb.SetTemplateRequest{Cluster: cluster, Pool: pool, Name: name, Template: !unset})
				if err != nil {
					return err
				}
				return a.print(resp.GetVolume(), a.volumeTable([]*pb.Volume{resp.GetVolume()}))
			})
		},
	}
	template.Flags().BoolVar(&unset, "unset", false, "make it a plain volume again")

	return group("volume", "Manage volumes (disk images) in storage pools",
		create, list, resize, snapshot, rollback, del, template, a.importCmd())
}

// qcow2Magic starts every qcow2 image.
var qcow2Magic = []byte("QFI\xfb")

func (a *app) importCmd() *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "import FILE POOL/NAME",
		Short: "Create a volume from a raw or qcow2 image file",
		Long:  "Streams the image to the cluster. A qcow2 image is first converted to raw with qemu-img into a temporary file ($TMPDIR).",
		Args:  volumeArg(1, "FILE", "POOL/NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, name, _ := splitVolume(args[1])
			path, cleanup, err := rawImage(cmd.Context(), args[0], a.errOut)
			if err != nil {
				return err
			}
			defer cleanup()
			f, err := os.Open(path)
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			size := uint64(st.Size())
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				bar := &progressBar{w: a.errOut, label: "importing " + args[1], total: size}
				vol, err := c.ImportVolume(ctx, cluster, pool, name, node, size, f, bar.update)
				bar.done()
				if err != nil {
					return err
				}
				return a.print(vol, a.volumeTable([]*pb.Volume{vol}))
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "dir pools: the node that holds the volume")
	_ = cmd.RegisterFlagCompletionFunc("node", a.completeNames(listNodeNames))
	return cmd
}

// rawImage returns the path of a raw version of the image at path: path
// itself, or a temporary conversion of a qcow2 image that cleanup removes.
func rawImage(ctx context.Context, path string, log io.Writer) (raw string, cleanup func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("import: %w", err)
	}
	head := make([]byte, len(qcow2Magic))
	_, err = io.ReadFull(f, head)
	f.Close()
	if err != nil || !bytes.Equal(head, qcow2Magic) {
		return path, func() {}, nil // raw, or too short to be qcow2
	}
	dir, err := os.MkdirTemp("", "corral-import-")
	if err != nil {
		return "", nil, fmt.Errorf("import: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	raw = filepath.Join(dir, filepath.Base(path)+".raw")
	fmt.Fprintf(log, "converting qcow2 image %s to raw in %s\n", path, dir)
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw).CombinedOutput()
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("convert %s to raw with qemu-img: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return raw, cleanup, nil
}

// progressBar draws "label [#####     ]  45% 450 MiB/1 GiB" on one line,
// redrawn at each whole percent.
type progressBar struct {
	w     io.Writer
	label string
	total uint64
	last  int
	drawn bool
}

const barWidth = 30

func (p *progressBar) update(sent uint64) {
	pct := 100
	if p.total > 0 {
		pct = int(sent * 100 / p.total)
	}
	if p.drawn && pct == p.last {
		return
	}
	p.last, p.drawn = pct, true
	fill := pct * barWidth / 100
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s/%s", p.label, strings.Repeat("#", fill), strings.Repeat(" ", barWidth-fill),
		pct, humanBytes(sent), humanBytes(p.total))
}

func (p *progressBar) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}
