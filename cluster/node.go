package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Defaults of Config's zero fields.
const (
	DefaultRejoinInterval   = 30 * time.Second
	DefaultLabel            = "lifeboat"
	DefaultReplicas         = 3
	DefaultAnnounceInterval = 250 * time.Millisecond
	DefaultRefreshInterval  = 5 * time.Minute
	DefaultHedgeDelay       = 5 * time.Millisecond
	DefaultLookupTimeout    = 500 * time.Millisecond
	// DefaultMaxIndexBytes bounds a home's index: 64 MiB, thirty times the largest index of the
	// simulated 10,000-member cluster (docs/cluster.md, "Scale"). A home whose index a flood
	// holds at that bound stays about 300 MiB resident (TestClusterIndexFlood), far below the
	// 1 GiB memory limit of the Helm chart, which also bounds the page cache of the blobs.
	DefaultMaxIndexBytes = 64 << 20
	// DefaultMaxClockSkew is how far past a home's clock a tag record's registry Date may be.
	DefaultMaxClockSkew = 2 * time.Minute

	defaultRehomeDelay = time.Second
	// defaultHomeGrace is a minute: gossip tells every member of a join within seconds.
	defaultHomeGrace = time.Minute
)

// Bounds of this node's own work.
const (
	// announceQueue is how many records Announce keeps waiting for the next batch.
	announceQueue = 100_000
	// leaveTimeout bounds Close's wait for its leave message to go out.
	leaveTimeout = 2 * time.Second
	// rpcTimeout bounds one announce request to a home.
	rpcTimeout = 5 * time.Second
	// dialTimeout bounds connecting to a peer.
	dialTimeout = time.Second
)

// counters are the outcomes of this node's lookups, for Stats.
type counters struct {
	lookupsFound, lookupsNotFound, lookupsFailed atomic.Int64
}

// withDefaults returns cfg with its zero fields set to their defaults, or an error naming what
// is wrong with it.
func (cfg Config) withDefaults() (Config, error) {
	if err := CheckNodeName(cfg.NodeName); err != nil {
		return cfg, fmt.Errorf("cluster: %w", err)
	}
	if len(cfg.Secret) == 0 {
		return cfg, fmt.Errorf("cluster: no cluster key: %w", errdefs.ErrInvalidArgument)
	}
	host, _, err := splitHostPort(cfg.GossipAddress)
	if err != nil {
		return cfg, fmt.Errorf("cluster: gossip address: %w", err)
	}
	if cfg.AdvertiseAddress == "" {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			cfg.AdvertiseAddress = host
		} else {
			return cfg, fmt.Errorf("cluster: gossip address %q binds every address, so an advertise address is needed: %w",
				cfg.GossipAddress, errdefs.ErrInvalidArgument)
		}
	}
	if ip := net.ParseIP(cfg.AdvertiseAddress); ip == nil || ip.IsUnspecified() {
		return cfg, fmt.Errorf("cluster: advertise address %q is not an IP address: %w", cfg.AdvertiseAddress, errdefs.ErrInvalidArgument)
	}
	if cfg.PeerPort <= 0 || cfg.PeerPort > 65535 {
		return cfg, fmt.Errorf("cluster: peer port %d: %w", cfg.PeerPort, errdefs.ErrInvalidArgument)
	}
	for _, j := range cfg.Join {
		if _, _, err := splitHostPort(j); err != nil {
			return cfg, fmt.Errorf("cluster: join address: %w", err)
		}
	}
	if cfg.Replicas < 0 || cfg.MaxIndexBytes < 0 || cfg.MaxClockSkew < 0 {
		return cfg, fmt.Errorf("cluster: replicas, max index bytes and max clock skew cannot be negative: %w", errdefs.ErrInvalidArgument)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.RejoinInterval, DefaultRejoinInterval)
	def(&cfg.AnnounceInterval, DefaultAnnounceInterval)
	def(&cfg.RefreshInterval, DefaultRefreshInterval)
	def(&cfg.HolderTTL, 3*cfg.RefreshInterval)
	def(&cfg.HedgeDelay, DefaultHedgeDelay)
	def(&cfg.LookupTimeout, DefaultLookupTimeout)
	def(&cfg.rehomeDelay, defaultRehomeDelay)
	def(&cfg.homeGrace, defaultHomeGrace)
	def(&cfg.MaxClockSkew, DefaultMaxClockSkew)
	if cfg.Label == "" {
		cfg.Label = DefaultLabel
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = DefaultReplicas
	}
	if cfg.MaxIndexBytes == 0 {
		cfg.MaxIndexBytes = DefaultMaxIndexBytes
	}
	return cfg, nil
}

// splitHostPort splits a host:port whose port is a number.
func splitHostPort(hostport string) (host string, port int, err error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", hostport, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port is not a number from 0 to 65535: %w", hostport, errdefs.ErrInvalidArgument)
	}
	return host, port, nil
}

// Start joins the cluster (or starts one: a join that reaches nobody is retried in the
// background) and starts announcing. Close it to leave.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg: cfg,
		log: log.G(ctx).WithField("node", cfg.NodeName),
	}
	index := NewIndex(cfg.MaxIndexBytes, cfg.HolderTTL)
	n.view = newView(cfg.NodeName, n.log, index.DropNode)
	n.home = newHome(index, cfg, n.view)
	if err := n.startTLS(n.view.list); err != nil {
		return nil, err
	}
	n.announcer = newAnnouncer(cfg, n.log, n.view, n.home, n.client)

	// The node's background work ends with Close, not with the context Start was given.
	n.ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	n.membership, err = startMembership(cfg, n.log, n.view)
	if err != nil {
		n.cancel()
		n.transport.CloseIdleConnections()
		return nil, err
	}
	n.goBackground(n.membership.joinLoop)
	n.goBackground(n.membership.flushLoop)
	n.goBackground(n.announcer.announceLoop)
	n.goBackground(n.announcer.refreshLoop)
	n.goBackground(n.home.expireLoop)
	return n, nil
}

// startTLS issues this node's certificate and makes its peer client, which checks that a
// server's certificate names a member that advertises its address among members.
func (n *Node) startTLS(members func() []Member) (err error) {
	if n.tls, err = newPeerTLS(n.cfg, n.log, members); err != nil {
		return err
	}
	n.transport = n.tls.transport()
	var rt http.RoundTripper = n.transport
	if n.cfg.WrapTransport != nil {
		rt = n.cfg.WrapTransport(rt)
	}
	n.client = &http.Client{Transport: &peerTransport{name: n.cfg.NodeName, base: rt, failures: n.tls.failures}}
	return nil
}

func (n *Node) goBackground(f func(context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// Close leaves the cluster (telling the others, within a few seconds) and stops the node's
// background work.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.closeErr = n.membership.leave()
		n.wg.Wait() // after the leave, which ends a join under way
		n.transport.CloseIdleConnections()
	})
	return n.closeErr
}

// Name is this node's member name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Client is the HTTP client for requests to peers, at https://<peer address>/: it dials with
// mutual TLS (this node's certificate; the peer's must be from the cluster's CA and name the
// member that advertises the address), names this node in HeaderPeer, and goes through
// Config.WrapTransport.
func (n *Node) Client() *http.Client { return n.client }

// Stats reports what the node counts.
func (n *Node) Stats() Stats {
	s := Stats{
		Members:         map[MemberState]int{},
		LookupsFound:    n.stats.lookupsFound.Load(),
		LookupsNotFound: n.stats.lookupsNotFound.Load(),
		LookupsFailed:   n.stats.lookupsFailed.Load(),
	}
	for _, m := range n.Members() {
		s.Members[m.State]++
	}
	n.home.report(&s)
	n.announcer.report(&s)
	s.HandshakeFailures = n.tls.failures.stats()
	return s
}
