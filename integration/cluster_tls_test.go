package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestClusterTLS: peers speak mutual TLS with certificates of a CA derived from the cluster key.
// What a sniffer on the path records is unreadable and cannot be replayed; a certificate binds
// the node name a request claims; a node whose clock is ahead is refused, counted in
// lifeboat_cluster_handshake_failures_total and logged with the reason.
func TestClusterTLS(t *testing.T) {
	t.Parallel()
	reg := harness.StartRegistry(t)
	const repo = "cluster/tls"
	img := reg.PushRandom(t, repo, "1", 1, 256<<10)
	cold := reg.PushRandom(t, repo, "cold", 1, 64<<10) // nobody pulls it
	c := harness.StartCluster(t, 2, upstreamOf(reg))
	a, b := c.Nodes[0], c.Nodes[1]
	pullVia(t, a, reg.Host(), repo, "1", img)
	waitHomed(t, c.Nodes, len(blobDigests(t, img))+2)
	layer := harness.LayerDigests(t, img)[0]
	data := layerBytes(t, img, layer)
	blobPath := "/v2/" + repo + "/blobs/" + layer + "?ns=" + reg.Host()
	bytesOut := func() float64 {
		return a.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "out"})
	}
	failures := func(lb *harness.Lifeboat, reason string) float64 {
		return lb.Metric(t, "lifeboat_cluster_handshake_failures_total", map[string]string{"direction": "in", "reason": reason})
	}

	t.Run("a sniffer reads nothing and replays nothing", func(t *testing.T) {
		proxy := startRecordingProxy(t, a.Peer)
		out := bytesOut()
		resp, err := harness.PeerClient(t, c.KeyFile, b.Name).Get("https://" + proxy.addr + blobPath)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
			t.Fatalf("B's GET through the path: %s, %d bytes, %v; want the blob", resp.Status, len(got), err)
		}
		harness.WaitFor(t, "A to count the blob sent", 10*time.Second, nil, func() error {
			if sent := bytesOut() - out; sent != float64(len(data)) {
				return fmt.Errorf("A counts %v bytes sent, want %d", sent, len(data))
			}
			return nil
		})
		up, down := proxy.recorded()
		for _, secret := range []string{"/v2/", repo, layer, cluster.HeaderPeer, b.Name} {
			if bytes.Contains(up, []byte(secret)) {
				t.Errorf("the request's bytes on the wire show %q", secret)
			}
		}
		if bytes.Contains(down, data[len(data)/2:len(data)/2+32]) || bytes.Contains(down, []byte("HTTP/1.1")) {
			t.Error("the answer's bytes on the wire show the blob or the HTTP answer")
		}

		// Replayed as recorded, to the same listener: the handshake fails (a new server random,
		// a new key), no request is read, nothing is sent.
		out, other := bytesOut(), failures(a, cluster.ReasonOther)
		conn, err := net.Dial("tcp", a.Peer)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(up); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		reply, err := io.ReadAll(conn)
		if isTimeout(err) {
			t.Fatal("A kept the replayed connection open")
		}
		if bytes.Contains(reply, data[len(data)/2:len(data)/2+32]) || bytes.Contains(reply, []byte("HTTP/1.1")) {
			t.Error("A answered the replay")
		}
		harness.WaitFor(t, "A to count the failed handshake", 10*time.Second, nil, func() error {
			if n := failures(a, cluster.ReasonOther) - other; n != 1 {
				return fmt.Errorf("A counts %v failed handshakes of reason other, want 1", n)
			}
			return nil
		})
		if sent := bytesOut() - out; sent != 0 {
			t.Errorf("A sent %v bytes after the replay", sent)
		}
	})

	t.Run("a certificate names one node", func(t *testing.T) {
		// A's certificate, claiming to be B: an announce that would make B a holder of a key,
		// and a coalesced fill of a blob nobody holds.
		asA := harness.PeerClient(t, c.KeyFile, a.Name)
		coldLayer := harness.LayerDigests(t, cold)[0]
		forgedKey := cluster.BlobKey(digest.FromString("forged"))
		fill := "/v2/" + repo + "/blobs/" + coldLayer + "?ns=" + reg.Host()
		wrong, gets := failures(b, cluster.ReasonWrongName), reg.BlobGets(repo, coldLayer)
		announce := newRequest(t, http.MethodPost, b.PeerURL(cluster.PathAnnounce), fmt.Sprintf(`{"records":[{"k":%q}]}`, forgedKey))
		coalesced := newRequest(t, http.MethodGet, b.PeerURL(fill), "")
		coalesced.Header.Set(cluster.HeaderFill, "1")
		for _, req := range []*http.Request{announce, coalesced} {
			req.Header.Set(cluster.HeaderPeer, b.Name)
			resp, err := asA.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with A's certificate claiming B: %s, want 401: %.200s", req.Method, req.URL.Path, resp.Status, body)
			}
		}
		if n := failures(b, cluster.ReasonWrongName) - wrong; n != 2 {
			t.Errorf("B counts %v requests refused for their name, want 2", n)
		}
		if got := reg.BlobGets(repo, coldLayer); got != gets {
			t.Errorf("the refused fill made %d registry GETs", got-gets)
		}
		// The announce did not count: B holds no forged key at its home (itself).
		resp, err := harness.PeerClient(t, c.KeyFile, "test").Get(b.PeerURL(cluster.PathLookup + "?key=" + url.QueryEscape(forgedKey)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Contains(string(body), `"n":`) {
			t.Errorf("lookup of the forged key at B: %s %s, want no holder", resp.Status, body)
		}
	})

	t.Run("a clock ahead is counted and logged", func(t *testing.T) {
		// A node whose clock is two hours ahead issues itself a certificate valid from an hour
		// before its clock: an hour ahead of A's.
		now := time.Now()
		ahead := harness.TLSClient(t, harness.PeerCertificate(t, c.KeyFile, "ahead", now.Add(time.Hour), now.Add(26*time.Hour)))
		out, before := bytesOut(), failures(a, cluster.ReasonNotYetValid)
		req := newRequest(t, http.MethodGet, a.PeerURL(blobPath), "")
		req.Header.Set(cluster.HeaderPeer, "ahead")
		if resp, err := ahead.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("A answered %s to a certificate not valid yet", resp.Status)
		}
		harness.WaitFor(t, "A to count a certificate not valid yet", 10*time.Second, nil, func() error {
			if n := failures(a, cluster.ReasonNotYetValid) - before; n != 1 {
				return fmt.Errorf("A counts %v, want 1", n)
			}
			return nil
		})
		for _, s := range []string{"node ahead's certificate is not valid yet", "ahead of this node's"} {
			if !strings.Contains(a.Log(), s) {
				t.Errorf("A's log does not say %q", s)
			}
		}
		if sent := bytesOut() - out; sent != 0 {
			t.Errorf("A sent %v bytes to it", sent)
		}
	})
}

func newRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// layerBytes is the compressed bytes of img's layer dgst, as a registry serves them.
func layerBytes(t *testing.T, img v1.Image, dgst string) []byte {
	t.Helper()
	h, err := v1.NewHash(dgst)
	if err != nil {
		t.Fatal(err)
	}
	l, err := img.LayerByDigest(h)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// recordingProxy forwards TCP connections to a target and records the bytes each way, as a
// sniffer on the path would.
type recordingProxy struct {
	addr string

	mu       sync.Mutex
	up, down bytes.Buffer
	conns    []net.Conn
}

func startRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{addr: ln.Addr().String()}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go p.pipe(out, in, &p.up)
			go p.pipe(in, out, &p.down)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// pipe copies src to dst, recording what passes in rec.
func (p *recordingProxy) pipe(dst, src net.Conn, rec *bytes.Buffer) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			rec.Write(buf[:n])
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// recorded returns copies of the bytes recorded from the clients (up) and to them (down).
func (p *recordingProxy) recorded() (up, down []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.up.Bytes()), bytes.Clone(p.down.Bytes())
}
