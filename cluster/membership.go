package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	stdlog "log"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/hashicorp/memberlist"
)

const (
	// departedTTL is how long Members still lists a member that died or left.
	departedTTL = time.Hour
	// maxDeparted bounds the departed members remembered.
	maxDeparted = 10_000
	// deadNodeReclaim is how long a member must have been dead before another address may
	// take its name.
	deadNodeReclaim = 30 * time.Second
	// resolveTimeout bounds resolving one join address.
	resolveTimeout = 5 * time.Second
	// maxJoinAddrs bounds the addresses one join tries: each that does not answer costs a
	// dial timeout, and one that answers is enough to merge with its side.
	maxJoinAddrs = 16
)

// meta is a member's memberlist metadata.
type meta struct {
	// Peer is the host:port of its peer listener.
	Peer string `json:"peer"`
	// Boot is random for every Start: a member that restarted (and lost the index it homed)
	// under the same name and address is told of its keys again.
	Boot string `json:"boot,omitempty"`
	// Leaving is set by Close just before the leave message: memberlist tells the others of a
	// death and of a leave in the same event, without saying which.
	Leaving bool `json:"leaving,omitempty"`
}

// membership is this node's memberlist: its metadata, the join loop that finds the others,
// and the leave. The view it feeds memberlist's events is where the members are read.
type membership struct {
	cfg  Config
	log  *log.Entry
	view *view
	ml   *memberlist.Memberlist
	// gossipAddr is the address the others gossip with this node at.
	gossipAddr string
	meta       meta // this node's metadata, as startMembership made it
	delegate   metaDelegate
	// transport is memberlist's, with its inbound streams bounded; gossip its logger, which
	// counts the gossip dropped as not from a member.
	transport *guardedTransport
	gossip    *gossipLog
	// joinAttempts counts the joins asked of memberlist.
	joinAttempts atomic.Int64
}

// startMembership creates this node's memberlist, which tells view its events; it joins
// nobody yet (joinLoop does).
func startMembership(cfg Config, log *log.Entry, view *view) (*membership, error) {
	m := &membership{cfg: cfg, log: log, view: view}
	host, port, err := splitHostPort(cfg.GossipAddress)
	if err != nil {
		return nil, err
	}
	boot := make([]byte, 8)
	_, _ = rand.Read(boot)
	m.meta = meta{Peer: m.peerAddr(), Boot: hex.EncodeToString(boot)}
	if err := m.setMeta(m.meta); err != nil {
		return nil, err
	}
	m.gossip = newGossipLog(log)
	logger := stdlog.New(m.gossip, "", 0)
	m.transport, err = newGuardedTransport(host, port, logger, m.gossip)
	if err != nil {
		return nil, err
	}
	port = m.transport.GetAutoBindPort() // port 0 took a free one
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddress, port
	mc.Transport = m.transport
	mc.SecretKey = gossipKey(cfg.Secret)
	mc.Label = cfg.Label
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	// A node replaced under its name at another address may take the name over once the old
	// one has been dead this long.
	mc.DeadNodeReclaimTime = deadNodeReclaim
	mc.Delegate = &m.delegate
	mc.Events = view
	mc.Logger = logger
	if cfg.tuneMemberlist != nil {
		cfg.tuneMemberlist(mc)
	}
	m.ml, err = memberlist.Create(mc)
	if err != nil {
		_ = m.transport.Shutdown() // Create shuts down only the transports it made
		return nil, fmt.Errorf("cluster: gossip on %s: %w", cfg.GossipAddress, err)
	}
	m.gossipAddr = net.JoinHostPort(mc.AdvertiseAddr, strconv.Itoa(mc.AdvertisePort))
	return m, nil
}

// flushLoop writes the line about the gossip dropped since the last one, every dropLogEvery.
func (m *membership) flushLoop(ctx context.Context) {
	every(ctx, m.gossip.every, m.gossip.flush)
}

// GossipStats is what a node counts of its gossip port, for metrics.
type GossipStats struct {
	// Dropped counts the packets and streams dropped as not from a member, by reason (every
	// one of GossipDropReasons, 0 included).
	Dropped map[string]int64
	// Streams is how many inbound gossip streams are open.
	Streams int
	// IgnoredMembers counts the members not used for peer traffic because the peer address
	// they advertise is not on their gossip address: once per member and metadata.
	IgnoredMembers int64
}

// GossipStats reports what the node counts of its gossip port.
func (n *Node) GossipStats() GossipStats {
	return GossipStats{
		Dropped:        n.membership.gossip.counts(),
		Streams:        n.membership.transport.openStreams(),
		IgnoredMembers: n.view.ignored.Load(),
	}
}

// peerAddr is this node's peer listener as the others reach it.
func (m *membership) peerAddr() string {
	return net.JoinHostPort(m.cfg.AdvertiseAddress, strconv.Itoa(m.cfg.PeerPort))
}

// setMeta makes md this node's metadata, for memberlist to send with its next alive message.
func (m *membership) setMeta(md meta) error {
	b, err := json.Marshal(md)
	if err != nil {
		return err
	}
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster: peer address %q is too long: %w", md.Peer, errdefs.ErrInvalidArgument)
	}
	m.delegate.meta.Store(&b)
	return nil
}

// leave tells the others that this node leaves (within a few seconds) and stops memberlist,
// which ends a join under way.
func (m *membership) leave() error {
	m.leaving()
	if err := m.ml.Leave(leaveTimeout); err != nil {
		m.log.WithError(err).Warn("cluster: leave message may not have reached the others")
	}
	return m.ml.Shutdown()
}

// leaving tells the others, in the metadata, that this node is about to leave.
func (m *membership) leaving() {
	md := m.meta
	md.Leaving = true
	if m.setMeta(md) != nil {
		return
	}
	if err := m.ml.UpdateNode(leaveTimeout); err != nil {
		m.log.WithError(err).Debug("cluster: the others may count this node dead rather than left")
	}
}

// metaDelegate gives memberlist this node's metadata; the node sends no messages of its own
// over gossip.
type metaDelegate struct {
	meta atomic.Pointer[[]byte]
}

func (d *metaDelegate) NodeMeta(limit int) []byte {
	md := d.meta.Load()
	if md == nil || len(*md) > limit {
		return nil
	}
	return *md
}
func (*metaDelegate) NotifyMsg([]byte)                           {}
func (*metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (*metaDelegate) LocalState(join bool) []byte                { return nil }
func (*metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// view is the members as memberlist's events told them. memberlist's own Members hands out
// pointers into state it goes on changing under its lock, and the State field of those is
// never set (v0.7.0), so the node keeps its own view: a member is alive from its join event
// until the event that it died or left. memberlist suspects a member without telling anyone
// outside, so Suspect is never reported. The event methods are called with memberlist's lock
// held, so they only record and signal.
type view struct {
	self string // this node's name
	log  *log.Entry
	// gone is told the name of a member that died or left, with memberlist's lock held.
	gone func(name string)
	// changed signals, coalesced, that the members changed; one reader takes the signals.
	changed chan struct{}

	// ignored counts the members found advertising a peer address that is not on their own
	// gossip address, once per member and metadata.
	ignored atomic.Int64

	mu      sync.Mutex
	members map[string]viewMember
}

type viewMember struct {
	Member
	boot    string    // from its metadata
	leaving bool      // from its metadata
	meta    []byte    // the metadata PeerAddr and boot were parsed from
	since   time.Time // of the last change of state
	// gossip is its gossip address (host:port), as memberlist knows it.
	gossip string
	// ignored is set while the peer address it advertises is not on its gossip address: it is
	// not used for peer traffic, as home or holder (see peerAddrOK).
	ignored bool
}

func newView(self string, log *log.Entry, gone func(name string)) *view {
	return &view{self: self, log: log, gone: gone, changed: make(chan struct{}, 1), members: map[string]viewMember{}}
}

func (v *view) NotifyJoin(node *memberlist.Node) {
	v.set(node, Alive)
	v.log.WithField("member", node.Name).WithField("address", node.Address()).Info("cluster: member joined")
	v.signal()
}

func (v *view) NotifyUpdate(node *memberlist.Node) {
	v.set(node, Alive)
	v.signal()
}

// NotifyLeave is called when a member is declared dead or leaves: gone drops the records it
// announced from this node's index at once, and the keys it was a home of move to others.
func (v *view) NotifyLeave(node *memberlist.Node) {
	// node.State says nothing here: memberlist keeps the state beside the Node it passes.
	v.mu.Lock()
	state := Dead
	if v.members[node.Name].leaving {
		state = Left
	}
	v.mu.Unlock()
	v.set(node, state)
	v.gone(node.Name)
	v.log.WithField("member", node.Name).WithField("state", state).Warn("cluster: member gone")
	v.signal()
}

// signal tells the reader of changes that the members changed, unless it has yet to take an
// earlier signal.
func (v *view) signal() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// changes signals that the members changed since it last did; several changes before the
// reader takes the signal make one.
func (v *view) changes() <-chan struct{} { return v.changed }

// set records node's state and its peer address from its metadata, and forgets members that
// departed long ago.
func (v *view) set(node *memberlist.Node, state MemberState) {
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.members[node.Name]
	gossip := node.Address()
	if !ok || !bytes.Equal(m.meta, node.Meta) || m.gossip != gossip {
		var md meta
		if err := json.Unmarshal(node.Meta, &md); err != nil || md.Peer == "" {
			v.log.WithField("member", node.Name).Warn("cluster: member without a peer address in its metadata")
		}
		m.PeerAddr, m.boot, m.leaving, m.meta, m.gossip = md.Peer, md.Boot, md.Leaving, bytes.Clone(node.Meta), gossip
		m.ignored = md.Peer != "" && !peerAddrOK(md.Peer, node.Addr)
		if m.ignored {
			v.ignored.Add(1)
			v.log.WithFields(log.Fields{"member": node.Name, "gossip": gossip, "peer": md.Peer}).
				Warn("cluster: member advertises a peer address that is not on its own address; no peer traffic goes to it")
		}
	}
	m.Name, m.Self = node.Name, node.Name == v.self
	if m.State != state {
		m.State, m.since = state, now
	}
	v.members[node.Name] = m
	if state == Alive {
		return
	}
	departed := 0
	for name, m := range v.members {
		if m.State != Alive {
			if now.Sub(m.since) > departedTTL {
				delete(v.members, name)
			} else {
				departed++
			}
		}
	}
	if departed > maxDeparted {
		delete(v.members, node.Name)
	}
}

// peerAddrOK reports whether peer, a member's advertised peer address (host:port), is on ip,
// the address memberlist reaches the member at. A member may not send the others' signed
// announces and lookups to somebody else's address.
func peerAddrOK(peer string, ip net.IP) bool {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		return false
	}
	pip := net.ParseIP(host)
	return pip != nil && pip.Equal(ip)
}

// usable reports whether m is alive and may carry peer traffic.
func (m viewMember) usable() bool { return m.State == Alive && !m.ignored }

// list lists the members, this node included, sorted by name.
func (v *view) list() []Member {
	v.mu.Lock()
	ms := make([]Member, 0, len(v.members))
	for _, m := range v.members {
		ms = append(ms, m.Member)
	}
	v.mu.Unlock()
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return ms
}

// member returns the alive member called name, unless it is ignored for peer traffic.
func (v *view) member(name string) (Member, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.members[name]
	return m.Member, ok && m.usable()
}

// alive returns the alive members, this node included, by name; members ignored for peer
// traffic are left out.
func (v *view) alive() map[string]Member {
	alive, _ := v.generation()
	return alive
}

// gossipAddrs returns the gossip addresses (host:port) of the alive members, this node and
// those ignored for peer traffic included.
func (v *view) gossipAddrs() map[string]bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	addrs := make(map[string]bool, len(v.members))
	for _, m := range v.members {
		if m.State == Alive {
			addrs[m.gossip] = true
		}
	}
	return addrs
}

// generation names the alive members' boots: a member that restarted is another generation.
type generation map[string]string

// generation returns the alive members, this node included, by name, and their generation.
func (v *view) generation() (map[string]Member, generation) {
	v.mu.Lock()
	defer v.mu.Unlock()
	alive := make(map[string]Member, len(v.members))
	gen := make(generation, len(v.members))
	for name, m := range v.members {
		if m.usable() {
			alive[name], gen[name] = m.Member, m.boot
		}
	}
	return alive, gen
}

// Members lists the members memberlist knows, this node included, sorted by name.
func (n *Node) Members() []Member { return n.view.list() }

// Member returns the alive member called name, unless it is not used for peer traffic (its
// advertised peer address is not on its own address).
func (n *Node) Member(name string) (Member, bool) { return n.view.member(name) }

// Homes returns key's home nodes: the Replicas alive members (this one included, those not
// used for peer traffic left out) with the highest rendezvous weight for key, highest first.
func (n *Node) Homes(key string) []Member {
	return homesAmong(key, n.view.alive(), n.cfg.Replicas)
}

// homesAmong is Homes among alive, with replicas homes.
func homesAmong(key string, alive map[string]Member, replicas int) []Member {
	hs := Rendezvous(key, names(alive), replicas)
	ms := make([]Member, len(hs))
	for i, h := range hs {
		ms[i] = alive[h]
	}
	return ms
}

func names(ms map[string]Member) []string {
	ns := make([]string, 0, len(ms))
	for name := range ms {
		ns = append(ns, name)
	}
	slices.Sort(ns)
	return ns
}

// joinLoop joins Config.Join at once, and again every RejoinInterval while any address it
// resolves to is not an alive member's. memberlist never contacts a member again once it
// declared it dead or left, so without this a seed that restarted, or the other side of a
// healed partition, would stay apart for good: the first node of a cluster finds the others,
// and a node that lost some finds them again.
func (m *membership) joinLoop(ctx context.Context) {
	if len(m.cfg.Join) == 0 {
		return
	}
	m.join(ctx)
	every(ctx, m.cfg.RejoinInterval, func() { m.join(ctx) })
}

// join resolves Config.Join (names again every time) and asks memberlist to join the
// addresses that are not alive members (maxJoinAddrs of them at most, picked at random).
func (m *membership) join(ctx context.Context) {
	// Alone, a failure is worth a warning; among others, a seed that is down is not news.
	level := log.DebugLevel
	if len(m.view.alive()) <= 1 {
		level = log.WarnLevel
	}
	members := m.view.gossipAddrs()
	var addrs []string
	for _, j := range m.cfg.Join {
		host, port, _ := splitHostPort(j) // checked by withDefaults
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ips, err := net.DefaultResolver.LookupIPAddr(rctx, host)
		cancel()
		if err != nil {
			m.log.WithError(err).WithField("join", j).Log(level, "cluster: cannot resolve a join address")
			continue
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip.IP.String(), strconv.Itoa(port))
			if a != m.gossipAddr && !members[a] && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 || ctx.Err() != nil {
		return
	}
	if len(addrs) > maxJoinAddrs {
		mrand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
		addrs = addrs[:maxJoinAddrs]
	}
	l := m.log.WithField("addresses", addrs)
	m.joinAttempts.Add(1)
	before := len(m.view.alive())
	contacted, err := m.ml.Join(addrs)
	if err != nil {
		l.WithError(err).WithField("retry", m.cfg.RejoinInterval).Log(level, "cluster: no node answered the join")
		return
	}
	if len(m.view.alive()) <= before {
		// The addresses answered but added no member: this node's own under another name, or a
		// member reached at another address than it advertises.
		l.Debug("cluster: the join found no member this node did not know")
		return
	}
	l.WithField("contacted", contacted).Info("cluster: joined")
}
