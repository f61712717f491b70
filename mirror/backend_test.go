package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// memBackend is a Backend over maps of bytes: an in-memory registry that keeps the resolver's
// error contract (NotFound for what it does not hold, InvalidArgument for malformed arguments).
// It counts its calls, so that a test can prove a refused request never reached it.
type memBackend struct {
	mu    sync.Mutex
	repos map[string]*memRepo // by registry + " " + repository
	calls atomic.Int64
	// invalid counts the calls refused with ErrInvalidArgument: the mirror must never make one.
	invalid atomic.Int64
}

var _ Backend = (*memBackend)(nil)

// memRepo is one repository of one registry.
type memRepo struct {
	// status is the CacheStatus of every answer from this repository; Hit when empty.
	status    resolver.CacheStatus
	tags      map[string]digest.Digest
	manifests map[digest.Digest]memManifest
	blobs     map[digest.Digest][]byte
	// breakAt makes a blob's readers fail, as a broken upstream stream does, once they reach
	// this offset of the blob.
	breakAt map[digest.Digest]int64
}

type memManifest struct {
	mediaType string
	body      []byte
}

// errUpstreamBroke is what a reader of a broken blob returns.
var errUpstreamBroke = errors.New("upstream connection reset")

func newMemBackend() *memBackend {
	return &memBackend{repos: map[string]*memRepo{}}
}

// repo returns (creating it) the repository of registry.
func (b *memBackend) repo(registry, repository string) *memRepo {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := registry + " " + repository
	r := b.repos[key]
	if r == nil {
		r = &memRepo{
			tags:      map[string]digest.Digest{},
			manifests: map[digest.Digest]memManifest{},
			blobs:     map[digest.Digest][]byte{},
			breakAt:   map[digest.Digest]int64{},
		}
		b.repos[key] = r
	}
	return r
}

// lookup finds a repository after checking the arguments every call has.
func (b *memBackend) lookup(registry, repository string) (*memRepo, error) {
	b.calls.Add(1)
	if h, ok := oci.NormalizeHost(registry); !ok || h != registry {
		return nil, b.refuse("registry %q", registry)
	}
	if !oci.ValidRepository(repository) {
		return nil, b.refuse("repository %q", repository)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.repos[registry+" "+repository]
	if r == nil {
		return nil, fmt.Errorf("repository %s/%s: %w", registry, repository, errdefs.ErrNotFound)
	}
	return r, nil
}

// refuse counts and returns an InvalidArgument error.
func (b *memBackend) refuse(format string, arg any) error {
	b.invalid.Add(1)
	return fmt.Errorf(format+": %w", arg, errdefs.ErrInvalidArgument)
}

func (r *memRepo) cacheStatus() resolver.CacheStatus {
	if r.status == "" {
		return resolver.Hit
	}
	return r.status
}

func (b *memBackend) Manifest(ctx context.Context, registry, repository, reference string) (resolver.Manifest, error) {
	r, err := b.lookup(registry, repository)
	if err != nil {
		return resolver.Manifest{}, err
	}
	dgst := digest.Digest(reference)
	if dgst.Validate() != nil {
		if !oci.ValidTag(reference) {
			return resolver.Manifest{}, b.refuse("reference %q", reference)
		}
		b.mu.Lock()
		d, ok := r.tags[reference]
		b.mu.Unlock()
		if !ok {
			return resolver.Manifest{}, fmt.Errorf("tag %s: %w", reference, errdefs.ErrNotFound)
		}
		dgst = d
	}
	b.mu.Lock()
	m, ok := r.manifests[dgst]
	b.mu.Unlock()
	if !ok {
		return resolver.Manifest{}, fmt.Errorf("manifest %s: %w", dgst, errdefs.ErrNotFound)
	}
	return resolver.Manifest{
		Descriptor: ocispec.Descriptor{MediaType: m.mediaType, Digest: dgst, Size: int64(len(m.body))},
		Body:       m.body,
		Status:     r.cacheStatus(),
	}, nil
}

func (b *memBackend) blob(registry, repository string, dgst digest.Digest) (*memRepo, []byte, error) {
	r, err := b.lookup(registry, repository)
	if err != nil {
		return nil, nil, err
	}
	if err := dgst.Validate(); err != nil {
		return nil, nil, b.refuse("digest %q", dgst)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := r.blobs[dgst]
	if !ok {
		return nil, nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return r, data, nil
}

func (b *memBackend) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, resolver.CacheStatus, error) {
	r, data, err := b.blob(registry, repository, dgst)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	return ocispec.Descriptor{Digest: dgst, Size: int64(len(data))}, r.cacheStatus(), nil
}

func (b *memBackend) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error) {
	m, err := b.open(registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	return m.blob(m.Reader), nil
}

// open opens a blob as Blob does, with access to its bytes.
func (b *memBackend) open(registry, repository string, dgst digest.Digest) (*memBlob, error) {
	r, data, err := b.blob(registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	breakAt, broken := r.breakAt[dgst]
	b.mu.Unlock()
	if !broken {
		breakAt = -1
	}
	return &memBlob{dgst: dgst, data: data, status: r.cacheStatus(), breakAt: breakAt, invalid: &b.invalid}, nil
}

func (b *memBackend) Tags(ctx context.Context, registry, repository string) ([]string, resolver.CacheStatus, error) {
	r, err := b.lookup(registry, repository)
	if err != nil {
		return nil, "", err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	tags := make([]string, 0, len(r.tags))
	for t := range r.tags {
		tags = append(tags, t)
	}
	slices.Sort(tags)
	return tags, r.cacheStatus(), nil
}

func (b *memBackend) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	r, err := b.lookup(registry, repository)
	if err != nil {
		return ocispec.Index{}, err
	}
	if err := dgst.Validate(); err != nil {
		return ocispec.Index{}, b.refuse("digest %q", dgst)
	}
	if artifactType != "" && !strings.Contains(artifactType, "/") {
		return ocispec.Index{}, b.refuse("artifactType %q", artifactType)
	}
	idx := ocispec.Index{Versioned: specsV2, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	for d, m := range r.manifests {
		var mf ocispec.Manifest
		if json.Unmarshal(m.body, &mf) != nil || mf.Subject == nil || mf.Subject.Digest != dgst {
			continue
		}
		at := mf.ArtifactType
		if at == "" {
			at = mf.Config.MediaType
		}
		if artifactType != "" && at != artifactType {
			continue
		}
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{
			MediaType: m.mediaType, Digest: d, Size: int64(len(m.body)), ArtifactType: at, Annotations: mf.Annotations,
		})
	}
	slices.SortFunc(idx.Manifests, func(a, b ocispec.Descriptor) int { return compareStrings(a.Digest.String(), b.Digest.String()) })
	return idx, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// memBlob is an open blob of a memBackend.
type memBlob struct {
	dgst    digest.Digest
	data    []byte
	status  resolver.CacheStatus
	breakAt int64 // -1: never breaks
	closed  atomic.Bool
	invalid *atomic.Int64 // the backend's count of refused calls
}

// blob is b as the Backend returns it, read with open (b.Reader, or a test's own).
func (b *memBlob) blob(open func(off, length int64) (io.ReadCloser, error)) *resolver.Blob {
	return resolver.NewBlob(ocispec.Descriptor{Digest: b.dgst, Size: int64(len(b.data))}, b.status, open, b.Close)
}

func (b *memBlob) Reader(off, length int64) (io.ReadCloser, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("blob %s: closed: %w", b.dgst, errdefs.ErrFailedPrecondition)
	}
	if off < 0 || length < 0 || off+length > int64(len(b.data)) {
		b.invalid.Add(1)
		return nil, fmt.Errorf("blob %s: range %d+%d of %d: %w", b.dgst, off, length, len(b.data), errdefs.ErrInvalidArgument)
	}
	end := off + length
	if b.breakAt >= 0 && b.breakAt < end {
		good := b.data[off:max(off, b.breakAt)]
		return io.NopCloser(io.MultiReader(bytes.NewReader(good), errorReader{errUpstreamBroke})), nil
	}
	return io.NopCloser(bytes.NewReader(b.data[off:end])), nil
}

func (b *memBlob) Close() error {
	b.closed.Store(true)
	return nil
}

type errorReader struct{ err error }

func (r errorReader) Read([]byte) (int, error) { return 0, r.err }

// errBackend fails every call with err: the resolver's answer when, say, the upstream is down.
// With openBlobs, Blob succeeds (a blob of size bytes) and its Reader fails with err instead.
type errBackend struct {
	err       error
	openBlobs bool
	size      int64
}

func (b errBackend) Manifest(context.Context, string, string, string) (resolver.Manifest, error) {
	return resolver.Manifest{}, b.err
}

func (b errBackend) StatBlob(context.Context, string, string, digest.Digest) (ocispec.Descriptor, resolver.CacheStatus, error) {
	return ocispec.Descriptor{}, "", b.err
}

func (b errBackend) Blob(_ context.Context, _, _ string, dgst digest.Digest) (*resolver.Blob, error) {
	if b.openBlobs {
		fail := func(int64, int64) (io.ReadCloser, error) { return nil, b.err }
		return resolver.NewBlob(ocispec.Descriptor{Digest: dgst, Size: b.size}, resolver.Miss, fail, nil), nil
	}
	return nil, b.err
}

func (b errBackend) Tags(context.Context, string, string) ([]string, resolver.CacheStatus, error) {
	return nil, "", b.err
}

func (b errBackend) Referrers(context.Context, string, string, digest.Digest, string) (ocispec.Index, error) {
	return ocispec.Index{}, b.err
}

// testImage is an image stored in a memBackend.
type testImage struct {
	index, manifest, config, layer ocispec.Descriptor
	blobs                          map[digest.Digest][]byte
}

// addImage stores under registry/repository:tag an OCI index of one linux/amd64 manifest, with
// its config and one layer of layerSize pseudo-random bytes (different for every image).
func (b *memBackend) addImage(registry, repository, tag string, layerSize int) testImage {
	r := b.repo(registry, repository)
	seed := [32]byte{}
	copy(seed[:], registry+"/"+repository+":"+tag)
	layer := make([]byte, layerSize)
	_, _ = rand.NewChaCha8(seed).Read(layer)
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]}}`, digest.FromBytes(layer)))

	img := testImage{blobs: map[digest.Digest][]byte{}}
	img.layer = b.putBlob(r, ocispec.MediaTypeImageLayer, layer)
	img.config = b.putBlob(r, ocispec.MediaTypeImageConfig, config)
	img.manifest = b.putManifest(r, ocispec.Manifest{
		Versioned: specsV2, MediaType: ocispec.MediaTypeImageManifest,
		Config: img.config, Layers: []ocispec.Descriptor{img.layer},
	})
	img.manifest.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	img.index = b.putManifest(r, ocispec.Index{
		Versioned: specsV2, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{img.manifest},
	})
	img.blobs[img.layer.Digest], img.blobs[img.config.Digest] = layer, config
	b.mu.Lock()
	r.tags[tag] = img.index.Digest
	b.mu.Unlock()
	return img
}

// addReferrer stores an artifact manifest whose subject is subject.
func (b *memBackend) addReferrer(registry, repository string, subject ocispec.Descriptor, artifactType string) ocispec.Descriptor {
	r := b.repo(registry, repository)
	subject.Platform = nil
	return b.putManifest(r, ocispec.Manifest{
		Versioned: specsV2, MediaType: ocispec.MediaTypeImageManifest, ArtifactType: artifactType,
		Config:  ocispec.DescriptorEmptyJSON,
		Layers:  []ocispec.Descriptor{ocispec.DescriptorEmptyJSON},
		Subject: &subject,
	})
}

func (b *memBackend) putBlob(r *memRepo, mediaType string, data []byte) ocispec.Descriptor {
	d := digest.FromBytes(data)
	b.mu.Lock()
	r.blobs[d] = data
	b.mu.Unlock()
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// putManifest stores m (an ocispec.Manifest or Index) and returns its descriptor.
func (b *memBackend) putManifest(r *memRepo, m any) ocispec.Descriptor {
	body, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	var mt struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &mt)
	d := digest.FromBytes(body)
	b.mu.Lock()
	r.manifests[d] = memManifest{mediaType: mt.MediaType, body: body}
	b.mu.Unlock()
	return ocispec.Descriptor{MediaType: mt.MediaType, Digest: d, Size: int64(len(body))}
}

var specsV2 = specs.Versioned{SchemaVersion: 2}
