// Package content serves lifeboat's cache to containerd as a proxy content store over gRPC
// (containerd.services.content.v1.Content), so that what containerd pulls lands in the same
// cache the registry mirror serves from, and a blob lifeboat already has is never downloaded
// again: containerd asks Info before writing and commits without fetching when the blob exists.
package content

import (
	"context"
	"fmt"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

// Delete modes: what a Delete from containerd does.
const (
	// DeleteRelease keeps the blob: containerd's garbage collector deletes every blob no
	// namespace references, including everything the mirror cached, which would empty the
	// offline cache. Released blobs stay cached, are still served, and are evicted by the size
	// budget like any other.
	DeleteRelease = "release"
	// DeleteRemove removes the blob from the cache at once.
	DeleteRemove = "remove"
)

// Store is the content.Store containerd sees: the cache, with Delete per the delete mode.
type Store struct {
	content.Store
	remove bool
}

var _ content.Store = (*Store)(nil)

// New wraps the cache for containerd. deleteMode is DeleteRelease (or empty) or DeleteRemove.
func New(cs content.Store, deleteMode string) (*Store, error) {
	switch deleteMode {
	case "", DeleteRelease:
		return &Store{Store: cs}, nil
	case DeleteRemove:
		return &Store{Store: cs, remove: true}, nil
	}
	return nil, fmt.Errorf("content delete mode %q: use %q or %q", deleteMode, DeleteRelease, DeleteRemove)
}

// Delete removes the blob with DeleteRemove. With DeleteRelease the blob stays cached (an
// absent one is still reported as not found, as containerd expects).
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if s.remove {
		return s.Store.Delete(ctx, dgst)
	}
	if _, err := s.Store.Info(ctx, dgst); err != nil {
		return err
	}
	log.G(ctx).WithField("digest", dgst).Debug("containerd released a blob; it stays cached")
	return nil
}

// MaxMsgSize is the gRPC message size the plugin server must accept: containerd's own default
// (16 MiB), since containerd sends writes of up to that size.
const MaxMsgSize = 16 << 20

// Register adds the content service for s to server. Errors reach containerd translated by
// contentserver (errgrpc).
func Register(server *grpc.Server, s content.Store) {
	contentapi.RegisterContentServer(server, contentserver.New(s))
}
