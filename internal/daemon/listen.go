package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
)

// listeners are the daemon's open addresses; metrics, plugin, admin and peer are nil when off.
type listeners struct {
	mirror, metrics, admin, plugin net.Listener
	// peer is the cluster tier's peer listener ([cluster] peer_address), with join set.
	peer net.Listener
}

// listenAll claims every address of the daemon, or none: on failure what it opened is closed
// and the socket directories it made are removed. On success, undo closes them all. With
// mirrorOnly, only the mirror's address is claimed.
func listenAll(cfg config.Config, mirrorOnly bool, undo *undoList) (*listeners, error) {
	var lns listeners
	tcp := func(name, addr string) (net.Listener, error) {
		ln, err := serving.ListenTCP(addr)
		if err != nil {
			return nil, fmt.Errorf("cannot listen for %s on %s: %w", name, addr, err)
		}
		undo.add(func() { ln.Close() })
		return ln, nil
	}
	unix := func(name, path string) (net.Listener, error) {
		undo.removeCreated(filepath.Dir(path))
		ln, err := serving.ListenUnix(path)
		if err != nil {
			return nil, fmt.Errorf("cannot start: %s socket: %w", name, err)
		}
		undo.add(func() { ln.Close() }) // which removes the socket file
		return ln, nil
	}
	var err error
	if lns.mirror, err = tcp("registry mirror", cfg.Mirror.Address); err != nil {
		return nil, err
	}
	if mirrorOnly {
		return &lns, nil
	}
	if cfg.Metrics.Address != "" {
		if lns.metrics, err = tcp("metrics", cfg.Metrics.Address); err != nil {
			return nil, err
		}
	}
	if cfg.Cluster.Enabled() {
		if lns.peer, err = tcp("cluster peers", cfg.Cluster.PeerAddress); err != nil {
			return nil, err
		}
	}
	if lns.plugin, err = unix("plugin", cfg.Plugin.Address); err != nil {
		return nil, err
	}
	if lns.admin, err = unix("admin", cfg.Admin.Address); err != nil {
		return nil, err
	}
	return &lns, nil
}

// undoList is what to undo, last first.
type undoList []func()

func (u *undoList) add(fn func()) { *u = append(*u, fn) }

func (u undoList) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// removeCreated arranges for dir, and the parents of it that do not exist now either, to be
// removed if they were created: dir with what is in it, the parents only if empty.
func (u *undoList) removeCreated(dir string) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return
	}
	u.add(func() {
		os.RemoveAll(missing[0])
		for _, d := range missing[1:] {
			os.Remove(d)
		}
	})
}
