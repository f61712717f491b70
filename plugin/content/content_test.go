package content

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lifeboat-dev/lifeboat/cache"
)

// serve serves the cache at root over gRPC on a unix socket and returns containerd's own proxy
// client of it: the store exactly as containerd sees it.
func serve(t testing.TB, ctx context.Context, root, mode string) (content.Store, *cache.Store, func() error) {
	store, err := cache.Open(ctx, root, cache.Options{MaxSize: 1 << 34})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := New(store, mode)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "lbct")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(MaxMsgSize), grpc.MaxSendMsgSize(MaxMsgSize))
	Register(srv, cs)
	go srv.Serve(l)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return proxy.NewContentStore(contentapi.NewContentClient(conn)), store, func() error {
		conn.Close()
		srv.Stop()
		os.RemoveAll(dir)
		return store.Close()
	}
}

// TestContentSuiteOverGRPC runs containerd's content store conformance suite through a real
// gRPC client against the served cache.
func TestContentSuiteOverGRPC(t *testing.T) {
	testsuite.ContentSuite(t, "lifeboat-grpc", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		cs, _, cleanup := serve(t, ctx, root, DeleteRemove)
		return ctx, cs, cleanup, nil
	})
}

func TestDeleteModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode       string
		stillThere bool
	}{
		{DeleteRelease, true},
		{DeleteRemove, false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			cs, store, cleanup := serve(t, ctx, t.TempDir(), tc.mode)
			defer cleanup()
			b := []byte("a layer containerd pulled")
			desc := ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}
			if err := content.WriteBlob(ctx, cs, "default/1/layer", bytes.NewReader(b), desc); err != nil {
				t.Fatal(err)
			}
			// What containerd's garbage collector does once no namespace references the blob.
			if err := cs.Delete(ctx, desc.Digest); err != nil {
				t.Fatalf("delete: %v", err)
			}
			_, err := store.Info(ctx, desc.Digest)
			if got := err == nil; got != tc.stillThere {
				t.Fatalf("after containerd's delete, cached=%v, want %v", got, tc.stillThere)
			}
			if tc.stillThere {
				// Still served, and a second pull finds it without downloading.
				if got, err := content.ReadBlob(ctx, cs, desc); err != nil || !bytes.Equal(got, b) {
					t.Fatalf("a released blob is not served: %v", err)
				}
				if _, err := cs.Writer(ctx, content.WithRef("default/2/layer"), content.WithDescriptor(desc)); !errdefs.IsAlreadyExists(err) {
					t.Fatalf("writing a released blob again = %v, want already exists (no download)", err)
				}
			}
			if err := cs.Delete(ctx, digest.FromString("never written")); !errdefs.IsNotFound(err) {
				t.Errorf("delete of an unknown blob = %v, want not found", err)
			}
		})
	}
	if _, err := New(nil, "shred"); err == nil {
		t.Error("an unknown delete mode was accepted")
	}
}
