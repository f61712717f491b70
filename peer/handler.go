package peer

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/mirror"
)

// Paths of the peer listener.
const (
	indexPrefix = "/lifeboat/v1/"
	apiPrefix   = "/v2/"
)

// maxIndexBody bounds the body of an index request, before the cluster's handler applies its
// own, tighter limits: a guard, so that no request can make this node read without end.
const maxIndexBody = 32 << 20

// NewHandler returns the peer listener's handler. Every request must come from the node its
// cluster.HeaderPeer names (auth: the name in its connection's certificate), else it gets 401
// and nothing else happens. /lifeboat/v1/ goes to index (the cluster node's handler), with
// cluster.HeaderPeer set to the node name auth proved;
// /v2/ is the OCI pull API over local, this node's cache as it serves its peers
// (resolver.PeerView), or, for a request with cluster.HeaderFill, over coalescing, which fills
// a blob this node does not hold from the registry (PeerView.Coalescing). Neither forwards a
// request to other peers.
//
// Bytes of /v2/ answers are counted in opts.Source's Stats.BytesOut when it is set. An error
// is mirror.New's.
func NewHandler(auth Authenticator, index http.Handler, local, coalescing mirror.Backend, opts HandlerOptions) (http.Handler, error) {
	observe, src := opts.Observe, opts.Source
	h := &handler{auth: auth, index: index, observe: func(a mirror.Answer) {
		if src != nil {
			src.bytesOut.Add(a.Bytes)
		}
		if observe != nil {
			observe(a)
		}
	}}
	var err error
	mopts := mirror.Options{HeaderDelay: opts.Budget.withDefaults().HeaderDelay, Observe: h.observe}
	if h.api, err = mirror.New(local, mopts); err != nil {
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	if h.fill, err = mirror.New(coalescing, mopts); err != nil {
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	return h, nil
}

type handler struct {
	auth    Authenticator
	index   http.Handler
	api     *mirror.Handler // this node's cache
	fill    *mirror.Handler // and coalesced fills
	observe func(mirror.Answer)
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	node, err := h.auth.Authenticate(r)
	if err != nil {
		log.G(r.Context()).WithError(err).WithField("remote", r.RemoteAddr).Debug("peer request refused")
		// Close the connection: its sender has nothing to say to this node.
		w.Header().Set("Connection", "close")
		oci.WriteError(w, r, oci.NewError(http.StatusUnauthorized, oci.CodeUnauthorized, "a peer request must come from the node its certificate names"))
		return
	}
	// What the index reads is the name the certificate proved.
	r.Header.Set(cluster.HeaderPeer, node)
	path := r.URL.Path
	switch {
	case strings.HasPrefix(path, indexPrefix):
		r.Body = http.MaxBytesReader(w, r.Body, maxIndexBody)
		h.index.ServeHTTP(w, r)
	case path == "/v2" || strings.HasPrefix(path, apiPrefix):
		h.serveAPI(w, r)
	default:
		oci.WriteError(w, r, oci.NewError(http.StatusNotFound, oci.CodeUnsupported, "not an endpoint of the peer listener"))
	}
}

// serveAPI answers a peer's pull request from this node's resolver. It parses the request
// once: a malformed one is refused as the mirror refuses it, and the rest is the mirror's to
// answer (Serve), over the coalescing backend when the request asks for a fill. A method
// other than GET or HEAD gets the mirror's 405.
func (h *handler) serveAPI(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.api.ServeHTTP(w, r)
		return
	}
	p, e := oci.ParsePath(r.URL.EscapedPath(), r.URL.RawQuery, oci.DockerHub)
	if e != nil {
		// As the mirror observes a refused request: it names no registry.
		h.refuse(w, r, e, mirror.Answer{Method: r.Method, Route: p.Route()}, start)
		return
	}
	if r.Header.Get(cluster.HeaderFill) == "1" {
		h.fill.Serve(w, r, p)
		return
	}
	h.api.Serve(w, r, p)
}

// refuse answers e, and observes a with e's status.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, e *oci.Error, a mirror.Answer, start time.Time) {
	oci.WriteError(w, r, e)
	a.Status, a.Duration = e.Status, time.Since(start)
	h.observe(a)
}
