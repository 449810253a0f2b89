package pki

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestGRPC checks the configurations through grpc-go's credentials, the way
// corrald uses them: an interceptor gates on VerifiedIdentity and lets
// anonymous (joining) clients through only for one method.
func TestGRPC(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const joinMethod = "/grpc.health.v1.Health/Check" // stands in for Join
	gate := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "no peer")
		}
		tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "not TLS")
		}
		st := tlsInfo.State
		if _, ok := VerifiedIdentity(st, st.ServerName); !ok && info.FullMethod != joinMethod {
			return nil, status.Error(codes.Unauthenticated, "certificate required")
		}
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(f.server.Config())), grpc.UnaryInterceptor(gate))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop) // subtests are parallel: they run after this function returns

	devAdmin := mustCreds(t, f.dev, RoleAdmin, "bob", t0, time.Hour)
	for _, tc := range []struct {
		name     string
		cfg      credentials.TransportCredentials
		method   string
		wantCode codes.Code
		wantMsg  string // for failures: proves it failed for the right reason
	}{
		{"prod admin check", credentials.NewTLS(ClientTLS(f.prodAdmin, "prod")), "check", codes.OK, ""},
		{"prod admin list", credentials.NewTLS(ClientTLS(f.prodAdmin, "prod")), "list", codes.OK, ""},
		{"dev admin list", credentials.NewTLS(ClientTLS(devAdmin, "dev")), "list", codes.OK, ""},
		{"joining client check", credentials.NewTLS(PinnedClientTLS("prod", f.prod.Fingerprint())), "check", codes.OK, ""},
		{"joining client list", credentials.NewTLS(PinnedClientTLS("prod", f.prod.Fingerprint())), "list", codes.Unauthenticated, "certificate required"},
		{"wrong pin", credentials.NewTLS(PinnedClientTLS("prod", f.dev.Fingerprint())), "check", codes.Unavailable, "pinned fingerprint"},
		{"dev admin to prod", credentials.NewTLS(withCert(f.prodAdmin, "prod", devAdmin)), "check", codes.Unavailable, ""}, // TLS 1.3: the server's alert may lose the race with the client's first write; TestHandshake checks the reason
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(tc.cfg))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := healthpb.NewHealthClient(conn)
			if tc.method == "check" {
				_, err = c.Check(ctx, &healthpb.HealthCheckRequest{})
			} else {
				_, err = c.List(ctx, &healthpb.HealthListRequest{})
			}
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tc.wantCode)
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %v does not mention %q", err, tc.wantMsg)
			}
		})
	}
}
