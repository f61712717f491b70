package peer

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// dyingHome is the home of a coalesced fill that sends the headers and the first half of
// the blob, then dies (its connection drops) when kill is closed.
type dyingHome struct {
	*httptest.Server
	kill chan struct{}
}

func newDyingHome(t *testing.T, data []byte) *dyingHome {
	t.Helper()
	h := &dyingHome{kill: make(chan struct{})}
	h.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		select {
		case <-h.kill:
		case <-r.Context().Done():
		}
		panic(http.ErrAbortHandler) // the connection drops mid-body, as a SIGKILL drops it
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *dyingHome) member() cluster.Member {
	return cluster.Member{Name: "h", PeerAddr: strings.TrimPrefix(h.URL, "https://"), State: cluster.Alive}
}

// TestFillSurvivesItsHome: the home of a coalesced fill dies after half the blob reached the
// client. The fill resumes at the offset written, from another holder when one is known
// (a 206 from it), else from the registry with a Range request; the client reads the whole
// blob, verified, and never a truncated answer.
func TestFillSurvivesItsHome(t *testing.T) {
	t.Parallel()
	for _, withHolder := range []bool{false, true} {
		name := "from the registry"
		if withHolder {
			name = "from another holder"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := push(t, up, "v1", 3<<20)
			b := newTestNode(t, "b", up, HandlerOptions{})
			b.warm(t, img.layer)
			home := newDyingHome(t, img.data)

			key := cluster.BlobKey(img.layer)
			c := newTestCluster("a", home.member(), b.member())
			c.setHomes(key, home.member())
			src := NewSource(c, SourceOptions{Coalesce: true})
			t.Cleanup(src.Close)
			r := newClusterResolver(t, up, src)
			gets, ranged, bRequests := up.Count("GET blobs"), up.Count("GET blobs ranged"), b.requests.Load()

			blob, err := r.Blob(t.Context(), testRegistry, testRepo, img.layer)
			if err != nil {
				t.Fatal(err)
			}
			defer blob.Close()
			if blob.Status != resolver.Peer {
				t.Errorf("status %q, want peer (through the home's fill)", blob.Status)
			}
			rc, err := blob.Reader(0, blob.Descriptor.Size)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			head := make([]byte, 64<<10)
			if _, err := io.ReadFull(rc, head); err != nil {
				t.Fatal(err)
			}
			if withHolder {
				c.setHolders(key, "b")
			}
			close(home.kill)
			rest, err := io.ReadAll(rc)
			if got := append(head, rest...); err != nil || !bytes.Equal(got, img.data) {
				t.Fatalf("the client read %d of %d bytes (equal %v), then %v", len(got), len(img.data), bytes.Equal(got, img.data), err)
			}
			if withHolder {
				if n := b.requests.Load() - bRequests; n != 1 {
					t.Errorf("the other holder got %d requests, want 1 (the range)", n)
				}
				if n := up.Count("GET blobs") - gets; n != 0 {
					t.Errorf("%d blob GETs at the registry, want none", n)
				}
				return
			}
			if n, m := up.Count("GET blobs")-gets, up.Count("GET blobs ranged")-ranged; n != 1 || m != 1 {
				t.Errorf("%d blob GETs at the registry, %d of them ranged; want 1, ranged", n, m)
			}
		})
	}
}

// TestOpenBlobAt: a holder sends the rest of a blob from an offset; asked for a blob of
// another size, it is refused before a byte is read.
func TestOpenBlobAt(t *testing.T) {
	t.Parallel()
	_, img, b := newHolder(t, 256<<10)
	c := newTestCluster("a", b.member())
	c.setHolders(cluster.BlobKey(img.layer), "b")
	src := NewSource(c, SourceOptions{})
	t.Cleanup(src.Close)
	size := int64(len(img.data))
	off := size / 3
	blob, err := src.OpenBlobAt(t.Context(), testRegistry, testRepo, img.layer, off, size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := readBlob(t, blob); blob.Size != size || blob.Peer != "b" || !bytes.Equal(got, img.data[off:]) {
		t.Errorf("range from %q, size %d, %d bytes; want b's %d bytes from %d of %d", blob.Peer, blob.Size, len(got), size-off, off, size)
	}
	in := src.Stats().BytesIn
	if _, err := src.OpenBlobAt(t.Context(), testRegistry, testRepo, img.layer, off, size+1, nil); err == nil {
		t.Error("a range of a blob of another size was accepted")
	}
	if got := src.Stats().BytesIn; got != in {
		t.Errorf("%d bytes were read of an answer of the wrong size", got-in)
	}
}
