package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "github.com/minet/corral/proto/corral/v1"
)

// ImportChunk is the size of the data messages ImportVolume sends: well
// under gRPC's 4 MiB message limit and large enough to keep the stream busy.
const ImportChunk = 1 << 20

// ImportVolume creates volume pool/name of size bytes from the raw image
// read from r, streamed in ImportChunk messages. progress, if not nil, is
// called after each chunk with the bytes sent so far. node picks the node
// of a dir pool.
func (c *Client) ImportVolume(ctx context.Context, cluster, pool, name, node string, size uint64, r io.Reader, progress func(sent uint64)) (*pb.Volume, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Storage.ImportVolume(ctx)
	if err != nil {
		return nil, fmt.Errorf("import %s/%s: %w", pool, name, err)
	}
	// When the server ends the stream early, Send reports io.EOF and the
	// server's reason comes from CloseAndRecv.
	finish := func() (*pb.Volume, error) {
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return nil, fmt.Errorf("import %s/%s: %w", pool, name, err)
		}
		return resp.GetVolume(), nil
	}
	header := &pb.ImportVolumeRequest{Cluster: cluster, Pool: pool, Name: name, SizeBytes: size, Node: node}
	if err := stream.Send(header); err != nil {
		if errors.Is(err, io.EOF) {
			return finish()
		}
		return nil, fmt.Errorf("import %s/%s: %w", pool, name, err)
	}
	buf := make([]byte, ImportChunk)
	var sent uint64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&pb.ImportVolumeRequest{Data: buf[:n]}); err != nil {
				if errors.Is(err, io.EOF) {
					return finish()
				}
				return nil, fmt.Errorf("import %s/%s: %w", pool, name, err)
			}
			sent += uint64(n)
			if progress != nil {
				progress(sent)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("import %s/%s: read image: %w", pool, name, rerr)
		}
	}
	if sent != size {
		return nil, fmt.Errorf("import %s/%s: read %d bytes, expected %d", pool, name, sent, size)
	}
	return finish()
}
