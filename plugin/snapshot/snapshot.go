// Package snapshot is lifeboat's containerd snapshotter: containerd's overlayfs snapshotter,
// served over gRPC as a proxy plugin, that unpacks layers straight from lifeboat's cache.
//
// When containerd unpacks an image it calls Prepare once per layer with the labels of the
// remote snapshot protocol (core/unpack/unpacker.go): containerd.io/snapshot.ref names the
// layer's chain ID, containerd.io/snapshot/diff-id its uncompressed digest, and, when the
// snapshotter's proxy plugin exports enable_remote_snapshot_annotations,
// containerd.io/snapshot/cri.layer-digest and cri.image-ref name the layer blob and the image.
// If that blob is in the cache (or a LayerFetcher can get it), Prepare applies it into a new
// snapshot, commits it under the chain ID and answers ErrAlreadyExists: containerd then finds
// the committed snapshot and neither fetches nor applies the layer. In every other case Prepare
// is the overlay snapshotter's, and containerd fetches and applies the layer itself.
//
// This is an adapter: which blobs are cached, and whether they can be fetched, is decided by
// the LayerSource (the cache and the resolver).
package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// Labels of containerd's remote snapshot protocol that Prepare reads.
const (
	// labelTargetRef is the chain ID the unpacker wants committed (snapshots.LabelSnapshotRef).
	labelTargetRef = snapshots.LabelSnapshotRef
	// labelDiffID is the layer's uncompressed digest, checked after applying.
	labelDiffID = snapshots.LabelSnapshotDiffID
	// labelLayerDigest is the digest of the layer blob, the key into the LayerSource.
	labelLayerDigest = snapshotters.TargetLayerDigestLabel
	// labelImageRef is the image reference, handed to a LayerFetcher.
	labelImageRef = snapshotters.TargetRefLabel
	// labelParentChainID is set by the unpacker on every layer but the first. In parallel
	// unpacks (snapshotters with the rebase capability) the parent argument is empty and
	// the real parent comes only with Commit; such Prepares are not served from the cache.
	labelParentChainID = "containerd.io/snapshot/parent-chain-id"
)

// tempKeyPrefix starts the keys of the active snapshots layers are applied into. New removes
// those a crash left behind.
const tempKeyPrefix = "lifeboat-apply/"

// LayerSource gives the bytes of layer blobs; lifeboat's cache (*cache.Store) is one.
// The descriptor it is called with carries the layer's digest only: its size and media type are
// not known to the snapshotter. If the blob is not available, ErrNotFound is returned.
type LayerSource interface {
	ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error)
}

// LayerFetcher is an optional capability of a LayerSource, found by type assertion: bring a
// layer blob that is not yet available into the source, from the registry of imageRef (for
// instance while the upstream is up). After it returns nil, ReaderAt must find the blob.
// Any error makes Prepare fall back to the plain overlay path, where containerd fetches the
// layer itself.
type LayerFetcher interface {
	FetchLayer(ctx context.Context, imageRef string, desc ocispec.Descriptor) error
}

// Option configures New.
type Option func(*config)

type config struct {
	overlayOpts []overlay.Opt
}

// WithOverlayOptions passes options to containerd's overlay snapshotter, after the default
// overlay.AsynchronousRemove (containerd's own default: removed snapshots' directories are
// deleted by Cleanup, which containerd's garbage collector calls).
func WithOverlayOptions(opts ...overlay.Opt) Option {
	return func(c *config) { c.overlayOpts = append(c.overlayOpts, opts...) }
}

// overlaySnapshotter names the embedded overlay snapshotter, so that the field is unexported.
type overlaySnapshotter = snapshots.Snapshotter

// Snapshotter is containerd's overlay snapshotter with a Prepare that serves layers from a
// LayerSource. All methods are safe for concurrent use.
type Snapshotter struct {
	overlaySnapshotter

	src   LayerSource
	locks *keyedMutex // one cache-backed Prepare per target chain ID at a time
}

// New opens (creating if needed) the overlay snapshotter rooted at root (lifeboat uses
// <root>/snapshots) and serves layers from src. Active snapshots left by a layer apply that a
// crash interrupted are removed.
func New(root string, src LayerSource, opts ...Option) (*Snapshotter, error) {
	if src == nil {
		return nil, fmt.Errorf("snapshotter needs a layer source: %w", errdefs.ErrInvalidArgument)
	}
	c := config{overlayOpts: []overlay.Opt{overlay.AsynchronousRemove}}
	for _, o := range opts {
		o(&c)
	}
	sn, err := overlay.NewSnapshotter(root, c.overlayOpts...)
	if err != nil {
		return nil, fmt.Errorf("overlay snapshotter at %s: %w", root, err)
	}
	s := &Snapshotter{overlaySnapshotter: sn, src: src, locks: newKeyedMutex()}
	if err := s.removeStale(context.Background()); err != nil {
		sn.Close()
		return nil, err
	}
	return s, nil
}

// Register adds the snapshots service (containerd.services.snapshots.v1.Snapshots) serving s to
// server, with errors translated to gRPC by containerd's snapshotservice.
func (s *Snapshotter) Register(server *grpc.Server) {
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(s))
}

// Cleanup deletes the directories of removed snapshots (snapshots.Cleaner).
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if c, ok := s.overlaySnapshotter.(snapshots.Cleaner); ok {
		return c.Cleanup(ctx)
	}
	return nil
}

// Prepare creates an active snapshot key on parent, as the overlay snapshotter does, unless the
// labels ask for a layer the LayerSource has: then the layer is applied and committed under
// the target chain ID, and the answer is ErrAlreadyExists (containerd's remote snapshot
// protocol), with no active snapshot created for key. A target already committed on the same
// parent is answered ErrAlreadyExists as well. Any failure of the cache path falls back to the
// overlay snapshotter's Prepare.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	req, err := parseRequest(parent, info.Labels)
	if err != nil {
		if !errors.Is(err, errNoTarget) { // a layer unpack, but not one the cache can serve
			log.G(ctx).WithFields(log.Fields{"key": key, "target": info.Labels[labelTargetRef]}).
				WithError(err).Info("layer not served from lifeboat's cache, containerd fetches it")
		}
		return s.overlaySnapshotter.Prepare(ctx, key, parent, opts...)
	}
	lg := log.G(ctx).WithFields(log.Fields{"key": key, "target": req.target, "layer": req.layer})

	applied, err := s.prepareFromSource(ctx, req, opts)
	switch {
	case err == nil && applied:
		lg.Info("layer applied from lifeboat's cache")
		return nil, fmt.Errorf("target snapshot %q: %w", req.target, errdefs.ErrAlreadyExists)
	case err == nil:
		lg.Info("layer already unpacked")
		return nil, fmt.Errorf("target snapshot %q: %w", req.target, errdefs.ErrAlreadyExists)
	case ctx.Err() != nil:
		return nil, err
	case errdefs.IsNotFound(err):
		lg.WithError(err).Info("layer not in lifeboat's cache, containerd fetches it")
	default:
		lg.WithError(err).Warn("applying layer from lifeboat's cache failed, containerd fetches it")
	}
	return s.overlaySnapshotter.Prepare(ctx, key, parent, opts...)
}

// request is a Prepare that may be served from the LayerSource.
type request struct {
	target   string        // chain ID to commit
	parent   string        // snapshot to apply onto
	layer    digest.Digest // layer blob
	diffID   string        // expected uncompressed digest; empty when not given
	imageRef string        // for a LayerFetcher; empty when not given
}

// errNoTarget: the Prepare is not a layer unpack (no containerd.io/snapshot.ref label).
var errNoTarget = errors.New("no target snapshot label")

// parseRequest reads the labels of a layer unpack that the LayerSource may serve. It returns
// errNoTarget when the Prepare is not a layer unpack, and another error, saying why, when it is
// one the cache path cannot take.
func parseRequest(parent string, labels map[string]string) (request, error) {
	req := request{
		target:   labels[labelTargetRef],
		parent:   parent,
		diffID:   labels[labelDiffID],
		imageRef: labels[labelImageRef],
	}
	if req.target == "" {
		return request{}, errNoTarget
	}
	v, ok := labels[labelLayerDigest]
	if !ok {
		return request{}, fmt.Errorf("no %s label: are remote snapshot annotations enabled for this snapshotter?", labelLayerDigest)
	}
	layer, err := digest.Parse(v)
	if err != nil {
		return request{}, fmt.Errorf("label %s: %w", labelLayerDigest, err)
	}
	if p := labels[labelParentChainID]; parent == "" && p != "" {
		return request{}, fmt.Errorf("parallel unpack: the parent %s is given only at commit", p)
	}
	req.layer = layer
	return req, nil
}

// prepareFromSource makes sure req.target is committed on req.parent: it reports applied=false
// with a nil error when it already was, applied=true when it applied the layer now. An error
// means nothing was committed; it is NotFound when the layer is not available.
func (s *Snapshotter) prepareFromSource(ctx context.Context, req request, opts []snapshots.Opt) (applied bool, err error) {
	unlock, err := s.locks.lock(ctx, req.target)
	if err != nil {
		return false, err
	}
	defer unlock()

	name, committed, err := s.findTarget(ctx, req.target, req.parent)
	if err != nil || committed {
		return false, err
	}

	desc := ocispec.Descriptor{
		// The blob's real media type is not known here. With this one, containerd's applier
		// detects gzip, zstd or no compression from the bytes.
		MediaType: images.MediaTypeDockerSchema2Layer,
		Digest:    req.layer,
	}
	if err := s.ensureLayer(ctx, req, desc); err != nil {
		return false, err
	}
	if err := s.applyAndCommit(ctx, req, name, desc, opts); err != nil {
		return false, err
	}
	return true, nil
}

// findTarget looks for a committed snapshot of chain ID target on parent: the snapshot named
// target, or one labelled with the target reference (as containerd commits the layers it unpacks
// itself, in any namespace: containerd finds the target by that label and the parent). When
// there is none, name is the name to commit it under: target, unless a snapshot with another
// parent has that name (the same layers unpacked separately in two namespaces), then a name
// derived from target and parent.
func (s *Snapshotter) findTarget(ctx context.Context, target, parent string) (name string, committed bool, err error) {
	name = target
	info, err := s.overlaySnapshotter.Stat(ctx, target)
	switch {
	case err == nil:
		if info.Kind == snapshots.KindCommitted && info.Parent == parent {
			return name, true, nil
		}
		name = target + "@" + digest.FromString(parent).Encoded()[:16]
	case !errdefs.IsNotFound(err):
		return "", false, err
	}
	filter := fmt.Sprintf(`labels.%q==%s,parent==%q`, labelTargetRef, target, parent)
	err = s.overlaySnapshotter.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindCommitted && i.Parent == parent && i.Labels[labelTargetRef] == target {
			committed = true
		}
		return nil
	}, filter)
	if errdefs.IsNotFound(err) {
		err = nil // no snapshot yet
	}
	return name, committed, err
}

// ensureLayer checks that the layer blob is in the LayerSource, asking its LayerFetcher for it
// when it is not and the image reference is known.
func (s *Snapshotter) ensureLayer(ctx context.Context, req request, desc ocispec.Descriptor) error {
	ra, err := s.src.ReaderAt(ctx, desc)
	if err == nil {
		return ra.Close()
	}
	if !errdefs.IsNotFound(err) {
		return err
	}
	f, ok := s.src.(LayerFetcher)
	if !ok || req.imageRef == "" {
		return err
	}
	if ferr := f.FetchLayer(ctx, req.imageRef, desc); ferr != nil {
		return fmt.Errorf("fetch layer %s of %s: %w", req.layer, req.imageRef, ferr)
	}
	log.G(ctx).WithField("layer", req.layer).WithField("image", req.imageRef).Debug("layer fetched into lifeboat's cache")
	return nil
}

// applyAndCommit applies the layer onto a temporary active snapshot on req.parent, checks its
// diff ID and commits it as name. On failure the temporary snapshot is removed.
func (s *Snapshotter) applyAndCommit(ctx context.Context, req request, name string, desc ocispec.Descriptor, opts []snapshots.Opt) (err error) {
	tmp := tempKey(req.target)
	mounts, err := s.overlaySnapshotter.Prepare(ctx, tmp, req.parent, opts...)
	if err != nil {
		return fmt.Errorf("prepare %s: %w", tmp, err)
	}
	defer func() {
		if err == nil {
			return
		}
		if rerr := s.overlaySnapshotter.Remove(context.WithoutCancel(ctx), tmp); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", tmp).Warn("failed to remove temporary snapshot")
		}
	}()

	// containerd's diff applier: decompression, the overlayfs whiteout conversion, and the
	// digest of the uncompressed stream.
	diff, err := apply.NewFileSystemApplier(s.src).Apply(ctx, desc, mounts)
	if err != nil {
		return fmt.Errorf("apply layer %s: %w", req.layer, err)
	}
	if req.diffID != "" && diff.Digest.String() != req.diffID {
		return fmt.Errorf("layer %s: uncompressed digest %s, want diff ID %s: %w",
			req.layer, diff.Digest, req.diffID, errdefs.ErrFailedPrecondition)
	}
	if err := s.overlaySnapshotter.Commit(ctx, name, tmp, opts...); err != nil {
		return fmt.Errorf("commit %s: %w", name, err)
	}
	return nil
}

// tempKey returns a new key for an active snapshot to apply target into.
func tempKey(target string) string {
	var b [8]byte
	rand.Read(b[:])
	return tempKeyPrefix + hex.EncodeToString(b[:]) + " " + target
}

// removeStale removes the temporary active snapshots of applies a crash interrupted.
func (s *Snapshotter) removeStale(ctx context.Context) error {
	var stale []string
	if err := s.overlaySnapshotter.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive && strings.HasPrefix(i.Name, tempKeyPrefix) {
			stale = append(stale, i.Name)
		}
		return nil
	}); err != nil && !errdefs.IsNotFound(err) { // NotFound: no snapshot yet
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, key := range stale {
		if err := s.overlaySnapshotter.Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove interrupted apply %s: %w", key, err)
		}
		log.G(ctx).WithField("key", key).Info("removed the snapshot of an interrupted layer apply")
	}
	if len(stale) > 0 {
		return s.Cleanup(ctx)
	}
	return nil
}
