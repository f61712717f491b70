package cluster

import (
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"
)

// trickle sends addr's peer listener, as the member name (with a certificate of the cluster's
// CA for it), the head of an announce, then its body a byte every every, on a connection of its
// own; the channel it returns is closed when the listener hangs up.
func trickle(t *testing.T, addr, name string, every time.Duration) <-chan struct{} {
	t.Helper()
	now := time.Now()
	cert := issue(t, authority(t, testSecret), name, now.Add(-time.Hour), now.Add(time.Hour))
	conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\nContent-Length: 1000\r\n\r\n", PathAnnounce, addr, HeaderPeer, name)
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for range tick.C {
			if _, err := conn.Write([]byte("{")); err != nil || t.Context().Err() != nil {
				return
			}
		}
	}()
	hungUp := make(chan struct{})
	go func() {
		defer close(hungUp)
		_, _ = io.ReadAll(conn)
	}()
	return hungUp
}

// Senders that trickle their bodies hold no announce slot: an honest sender's records land
// though more tricklers than slots are connected, and the tricklers are cut off once an honest
// sender would have given up (rpcTimeout). The issue's row 4: four connections trickling one
// byte every 20 s held every slot for 7 minutes.
func TestAnnounceTricklersHoldNoSlot(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.11.11", "a", nil)
	b := startNode(t, "127.0.11.12", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))
	var cut []<-chan struct{}
	for range 2 * maxAnnouncesServed {
		cut = append(cut, trickle(t, a.srv.Listener.Addr().String(), "b", time.Second))
	}
	start := time.Now()
	k := key(1)
	b.Announce(Record{Key: k})
	eventually(t, 30*time.Second, "a indexes b's record", func() bool {
		return slices.Equal(holderNames(a.index.Get(k, time.Now())), []string{"b"})
	})
	if s := b.Stats(); s.AnnouncedRecords == 0 {
		t.Errorf("b counts no record announced: %+v", s)
	}
	for i, c := range cut {
		select {
		case <-c:
		case <-time.After(time.Minute):
			t.Fatalf("trickler %d still connected %s after it started", i, time.Since(start).Round(time.Second))
		}
	}
	if a.home.buffered.Load() != 0 {
		t.Errorf("%d bytes of announce bodies still counted as held", a.home.buffered.Load())
	}
}
