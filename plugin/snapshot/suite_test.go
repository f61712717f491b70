package snapshot

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// suiteName is the name the suite knows the snapshotter by. It changes what the suite expects:
// "overlayfs" skips renaming a directory of a lower layer, which overlayfs refuses (EXDEV)
// without redirect_dir; containerd's overlay snapshotter, which lifeboat's is, runs it so.
const suiteName = "overlayfs"

// TestSnapshotterSuite runs containerd's snapshotter conformance suite against Snapshotter.
func TestSnapshotterSuite(t *testing.T) {
	requireOverlay(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root, newMapSource())
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestSnapshotterSuiteGRPC runs the suite again through containerd's snapshots proxy client,
// as containerd sees the snapshotter: Register on a gRPC server on a unix socket.
func TestSnapshotterSuiteGRPC(t *testing.T) {
	requireOverlay(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root, newMapSource())
		if err != nil {
			return nil, nil, err
		}
		client, stop, err := serve(sn)
		if err != nil {
			sn.Close()
			return nil, nil, err
		}
		return client, func() error { return errors.Join(stop(), sn.Close()) }, nil
	})
}

// serve serves sn on a unix socket and returns a proxy snapshotter connected to it.
func serve(sn *Snapshotter) (snapshots.Snapshotter, func() error, error) {
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "lbsn")
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	server := grpc.NewServer()
	sn.Register(server)
	done := make(chan error, 1)
	go func() { done <- server.Serve(l) }()

	conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		server.Stop()
		os.RemoveAll(dir)
		return nil, nil, err
	}
	stop := func() error {
		cerr := conn.Close()
		server.GracefulStop()
		return errors.Join(cerr, <-done, os.RemoveAll(dir))
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lifeboat"), stop, nil
}

// TestPrepareFromCacheGRPC checks the cache-backed Prepare through gRPC: the client sees
// ErrAlreadyExists and then finds the committed target.
func TestPrepareFromCacheGRPC(t *testing.T) {
	t.Parallel()
	st := openCache(t)
	ctx, sn := newTestSnapshotter(t, st)
	client, stop, err := serve(sn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop server: %v", err)
		}
	})

	l := buildLayer(t, compression.Gzip, baseFiles...)
	blob := putBlob(t, st, l.blob)
	chain := chainIDs(l)[0]
	mounts, err := client.Prepare(ctx, extractKey(t, chain), "", snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, "")))
	mustAlreadyExists(t, mounts, err)
	info, err := client.Stat(ctx, chain)
	if err != nil || info.Kind != snapshots.KindCommitted {
		t.Fatalf("Stat(%s) = %+v, %v; want committed", chain, info, err)
	}
	if got := readTree(ctx, t, client, chain); got["etc/motd"] != "served from the cache\n" {
		t.Errorf("view through gRPC %v lacks etc/motd", got)
	}

	// Without the layer: the plain overlay answer, an active snapshot.
	other := buildLayer(t, compression.Gzip, entry{name: "x", body: "x"})
	otherChain := chainIDs(other)[0]
	key := extractKey(t, otherChain)
	if _, err := client.Prepare(ctx, key, "", snapshots.WithLabels(unpackLabels(otherChain, blobDigest(other), other.diffID, ""))); err != nil {
		t.Fatalf("Prepare of an uncached layer: %v", err)
	}
	if info, err := client.Stat(ctx, key); err != nil || info.Kind != snapshots.KindActive {
		t.Errorf("Stat(key) = %+v, %v; want active", info, err)
	}
	if err := client.(snapshots.Cleaner).Cleanup(logtest.WithT(ctx, t)); err != nil {
		t.Errorf("Cleanup through gRPC: %v", err)
	}
	if _, err := client.Stat(ctx, "missing"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat(missing) = %v, want not found through gRPC", err)
	}
}
