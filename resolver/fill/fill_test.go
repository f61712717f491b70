package fill

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
)

// gatedSource serves body, holding it after its first half until gate is closed.
type gatedSource struct {
	body []byte
	gate chan struct{}
	from string
}

func (s gatedSource) Open(ctx context.Context) (Body, error) {
	pr, pw := io.Pipe()
	go func() {
		half := len(s.body) / 2
		pw.Write(s.body[:half])
		select {
		case <-s.gate:
		case <-ctx.Done():
		}
		pw.Write(s.body[half:])
		pw.Close()
	}()
	return Body{ReadCloser: pr, Size: int64(len(s.body)), From: s.from}, nil
}

// missingSource has nothing.
type missingSource struct{}

func (missingSource) Open(context.Context) (Body, error) {
	return Body{}, errdefs.ErrNotFound
}

func newEngine(t *testing.T) (*Engine, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := New(store, Options{
		FillTimeout: time.Minute, IdleTimeout: 10 * time.Second, MaxBlobSize: 1 << 30,
		HoldWhole: -1, MaxFills: 4, QueueTimeout: time.Second, MaxAbandoned: 4,
	})
	t.Cleanup(e.Close)
	return e, store
}

// joinStarted joins key's fill over sources, released at the end of the test, once its size
// is known.
func joinStarted(t *testing.T, e *Engine, key Key, sources ...Source) *Fill {
	t.Helper()
	f, err := e.Join(t.Context(), key, sources)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Release)
	if err := f.Started(t.Context()); err != nil {
		t.Fatal(err)
	}
	return f
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteToEndsWithSourceFailure has a download that fails verification written to two
// clients, as the mirror does, one with WriteTo (sendfile from the ingest) and one through the
// buffered way WriteTo falls back to without /proc: both get ErrSourceFailed, so the mirror can
// tell the source's fault from the client's and abort the answer, and both wrote the same bytes,
// none of them complete.
func TestWriteToEndsWithSourceFailure(t *testing.T) {
	t.Parallel()
	e, store := newEngine(t)
	want := randomBytes(t, 2*SmallBlob)
	corrupt := bytes.Clone(want)
	corrupt[len(corrupt)-1] ^= 1
	src := gatedSource{body: corrupt, gate: make(chan struct{}), from: "upstream test"}
	key := Key{Registry: "registry.test", Repository: "app", Digest: digest.FromBytes(want)}

	f := joinStarted(t, e, key, missingSource{}, src)
	rc := f.Reader(t.Context(), 0, int64(len(want)), false)
	rc2 := f.Reader(t.Context(), 0, int64(len(want)), false)
	var buf2 bytes.Buffer
	fallback := make(chan error, 1)
	go func() {
		_, err := rc2.(*reader).copyTo(&buf2)
		fallback <- err
	}()
	close(src.gate)
	var buf bytes.Buffer
	n, err := rc.(io.WriterTo).WriteTo(&buf)
	if !errors.Is(err, ErrSourceFailed) {
		t.Fatalf("WriteTo of a corrupt download: %d bytes, %v; want ErrSourceFailed", n, err)
	}
	if n != int64(buf.Len()) || n >= int64(len(want)) {
		t.Errorf("WriteTo reported %d bytes and wrote %d of a %d-byte blob", n, buf.Len(), len(want))
	}
	if err := <-fallback; !errors.Is(err, ErrSourceFailed) {
		t.Errorf("the buffered copy of a corrupt download: %v; want ErrSourceFailed", err)
	}
	if !bytes.Equal(buf.Bytes(), buf2.Bytes()) {
		t.Errorf("WriteTo and its buffered fallback wrote different bytes (%d and %d)", buf.Len(), buf2.Len())
	}
	var mm *MismatchError
	if _, err := f.Wait(t.Context()); !errors.As(err, &mm) || !errdefs.IsFailedPrecondition(err) {
		t.Errorf("the fill's error: %v; want a MismatchError", err)
	}
	if _, err := store.Info(t.Context(), key.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("the corrupt blob was cached: %v", err)
	}
}

// TestSourcesInOrder: a fill passes over a source without the blob, and over one whose bytes
// fail before any reached a reader, to the next, whose bytes it caches; each body is told how
// its transfer ended.
func TestSourcesInOrder(t *testing.T) {
	t.Parallel()
	e, store := newEngine(t)
	want := randomBytes(t, 64<<10)
	bad := bytes.Clone(want)
	bad[0] ^= 1
	var outcomes []error
	done := func(_ int64, err error) { outcomes = append(outcomes, err) }
	key := Key{Registry: "registry.test", Repository: "app", Digest: digest.FromBytes(want)}
	f, err := e.Join(t.Context(), key, []Source{
		missingSource{},
		bodySource{body: bad, peer: "b", done: done},
		bodySource{body: want, done: done},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Release()
	if ended, err := f.Wait(t.Context()); !ended || err != nil {
		t.Fatalf("fill: %v", err)
	}
	if st := f.State(); st.Peer != "" {
		t.Errorf("the fill names peer %q as its source; the bytes came from the last source", st.Peer)
	}
	var mm *MismatchError
	if len(outcomes) != 2 || !errors.As(outcomes[0], &mm) || outcomes[1] != nil {
		t.Errorf("outcomes told to the bodies: %v; want a mismatch, then nil", outcomes)
	}
	got, err := io.ReadAll(io.NewSectionReader(mustReaderAt(t, store, key.Digest), 0, int64(len(want))))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("cached bytes: %v, equal %v", err, bytes.Equal(got, want))
	}
}

// bodySource serves body at once.
type bodySource struct {
	body []byte
	peer string
	done func(int64, error)
}

func (s bodySource) Open(context.Context) (Body, error) {
	return Body{ReadCloser: io.NopCloser(bytes.NewReader(s.body)), Size: int64(len(s.body)), From: "test", Peer: s.peer, Done: s.done}, nil
}

func mustReaderAt(t *testing.T, store *cache.Store, dgst digest.Digest) io.ReaderAt {
	t.Helper()
	ra, err := store.ReaderAt(t.Context(), ocispec.Descriptor{Digest: dgst})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ra.Close() })
	return ra
}

// breakingSource sends the first at bytes of body, then, once gate is closed, breaks (a peer
// killed mid-transfer).
type breakingSource struct {
	body []byte
	at   int
	gate chan struct{}
	done func(int64, error)
}

var errBroke = errors.New("connection reset by peer")

func (s breakingSource) Open(ctx context.Context) (Body, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.Write(s.body[:s.at])
		select {
		case <-s.gate:
		case <-ctx.Done():
		}
		pw.CloseWithError(errBroke)
	}()
	return Body{ReadCloser: pr, Size: int64(len(s.body)), From: "peer h", Peer: "h", Done: s.done}, nil
}

// rangeSource serves body from any offset (a Resumer); size, when not zero, is the size it
// claims instead of body's.
type rangeSource struct {
	body   []byte
	size   int64
	from   string
	offs   *[]int64 // the offsets it was opened at
	done   func(int64, error)
	failAt error // OpenAt's error, when set
}

func (s rangeSource) Open(ctx context.Context) (Body, error) { return s.OpenAt(ctx, 0, 0) }

func (s rangeSource) OpenAt(_ context.Context, off, _ int64) (Body, error) {
	*s.offs = append(*s.offs, off)
	if s.failAt != nil {
		return Body{}, s.failAt
	}
	size := s.size
	if size == 0 {
		size = int64(len(s.body))
	}
	return Body{ReadCloser: io.NopCloser(bytes.NewReader(s.body[off:])), Size: size, From: s.from, Done: s.done}, nil
}

// TestResumeAfterBytesReachedReaders: the fill's first source breaks after a reader got bytes
// of it (no start over is possible then); the fill goes on from the offset written with the
// next source that can send from an offset, passing over one that cannot and one that has
// another size, and the reader gets the whole blob, verified and cached. When what the next
// source sends does not make the blob, or no source can resume, the reader gets an error and
// never a complete body.
func TestResumeAfterBytesReachedReaders(t *testing.T) {
	t.Parallel()
	want := randomBytes(t, 4*SmallBlob)
	tail := bytes.Clone(want)
	tail[len(tail)-1] ^= 1
	const at = SmallBlob + 12345
	tests := []struct {
		name string
		// next are the sources after the one that breaks, given the offsets they were
		// opened at.
		next       func(offs *[]int64) []Source
		wantOffs   []int64
		wantErr    bool
		wantResume bool // the fill's error is a MismatchError of resumed bytes
	}{
		{
			name: "from the next source that can",
			next: func(offs *[]int64) []Source {
				return []Source{
					bodySource{body: want},
					rangeSource{body: want, size: int64(len(want)) + 1, from: "upstream bigger", offs: offs},
					rangeSource{body: want, from: "upstream good", offs: offs},
				}
			},
			wantOffs: []int64{at, at},
		},
		{
			name:     "no source can",
			next:     func(offs *[]int64) []Source { return []Source{bodySource{body: want}, missingSource{}} },
			wantErr:  true,
			wantOffs: nil,
		},
		{
			name: "the source that can fails",
			next: func(offs *[]int64) []Source {
				return []Source{rangeSource{body: want, from: "upstream down", offs: offs, failAt: errdefs.ErrUnavailable}}
			},
			wantErr:  true,
			wantOffs: []int64{at},
		},
		{
			name: "the bytes do not make the blob",
			next: func(offs *[]int64) []Source {
				return []Source{rangeSource{body: tail, from: "upstream bad", offs: offs}}
			},
			wantErr:    true,
			wantOffs:   []int64{at},
			wantResume: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, store := newEngine(t)
			key := Key{Registry: "registry.test", Repository: "app", Digest: digest.FromBytes(want)}
			var brokeWith error
			first := breakingSource{body: want, at: at, gate: make(chan struct{}), done: func(_ int64, err error) { brokeWith = err }}
			var offs []int64
			f := joinStarted(t, e, key, append([]Source{first}, tt.next(&offs)...)...)
			rc := f.Reader(t.Context(), 0, int64(len(want)), false)
			head := make([]byte, 1)
			if _, err := io.ReadFull(rc, head); err != nil { // a byte reached the reader
				t.Fatal(err)
			}
			close(first.gate)
			rest, err := io.ReadAll(rc)
			got := append(head, rest...)
			_, ferr := f.Wait(t.Context())
			if !errors.Is(brokeWith, errBroke) {
				t.Errorf("the first source was told %v, want its break", brokeWith)
			}
			if !slices.Equal(offs, tt.wantOffs) {
				t.Errorf("sources opened at %v, want %v", offs, tt.wantOffs)
			}
			if tt.wantErr {
				if err == nil || ferr == nil || len(got) >= len(want) {
					t.Errorf("reader: %d of %d bytes, %v; fill: %v; want both to fail, the body incomplete", len(got), len(want), err, ferr)
				}
				var mm *MismatchError
				if errors.As(ferr, &mm) != tt.wantResume || (mm != nil && !mm.Resumed) {
					t.Errorf("fill: %v; want a MismatchError of resumed bytes: %v", ferr, tt.wantResume)
				}
				if _, err := store.Info(t.Context(), key.Digest); !errdefs.IsNotFound(err) {
					t.Errorf("the failed blob was cached: %v", err)
				}
				return
			}
			if err != nil || ferr != nil || !bytes.Equal(got, want) {
				t.Fatalf("reader: %d of %d bytes (equal %v), %v; fill: %v", len(got), len(want), bytes.Equal(got, want), err, ferr)
			}
			got, err = io.ReadAll(io.NewSectionReader(mustReaderAt(t, store, key.Digest), 0, int64(len(want))))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("cached bytes: %v, equal %v", err, bytes.Equal(got, want))
			}
		})
	}
}

// chunkedSource serves body without a Content-Length (Size -1), 1 MiB a read, checking on every
// read that the fills in flight hold no more of the cache's budget than it has.
type chunkedSource struct {
	body   []byte
	store  *cache.Store
	budget int64
	over   *atomic.Int64 // reads that saw more reserved than the budget
}

func (s chunkedSource) Open(context.Context) (Body, error) {
	return Body{ReadCloser: io.NopCloser(&checkingReader{r: bytes.NewReader(s.body), s: s}), Size: -1, From: "test"}, nil
}

type checkingReader struct {
	r *bytes.Reader
	s chunkedSource
}

func (c *checkingReader) Read(p []byte) (int, error) {
	if c.s.store.Reserved() > c.s.budget {
		c.s.over.Add(1)
	}
	return c.r.Read(p[:min(len(p), 1<<20)])
}

// TestFillsInFlightStayWithinTheBudget: eight concurrent fills of 18 MiB blobs of unknown size
// into a cache of 20 MiB. Each alone fits; together they do not. The room they hold is reserved
// against the budget as their bytes arrive, so that at no time do they hold more than the
// budget, and those that do not fit fail as the cache being full (ResourceExhausted), leaving
// nothing behind; the cache never holds more than its budget.
func TestFillsInFlightStayWithinTheBudget(t *testing.T) {
	t.Parallel()
	const budget, size, fills = 20 << 20, 18 << 20, 8
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: budget})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := New(store, Options{
		FillTimeout: time.Minute, IdleTimeout: 10 * time.Second, MaxBlobSize: 1 << 30,
		HoldWhole: -1, MaxFills: fills, QueueTimeout: time.Second, MaxAbandoned: fills,
	})
	t.Cleanup(e.Close)
	var over atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, fills)
	for i := range fills {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := randomBytes(t, size)
			key := Key{Registry: "registry.test", Repository: "app", Digest: digest.FromBytes(body)}
			f, err := e.Join(t.Context(), key, []Source{chunkedSource{body: body, store: store, budget: budget, over: &over}})
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Release()
			_, errs[i] = f.Wait(t.Context())
		}()
	}
	wg.Wait()
	var ok int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errdefs.IsResourceExhausted(err):
			t.Errorf("a fill that did not fit: %v, want resource exhausted", err)
		}
	}
	if ok == 0 || ok == fills {
		t.Errorf("%d of %d fills of %d bytes succeeded in a budget of %d: want some, not all", ok, fills, size, budget)
	}
	if n := over.Load(); n != 0 {
		t.Errorf("%d reads saw the fills in flight hold more than the budget", n)
	}
	if r := store.Reserved(); r != 0 {
		t.Errorf("%d bytes still reserved after every fill ended", r)
	}
	if sts, _ := store.ListStatuses(t.Context()); len(sts) != 0 {
		t.Errorf("%d ingests left behind", len(sts))
	}
}
