package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
)

// cacheAPI is what images, gc and verify need: the daemon's admin client or, when the daemon is
// not running, an admin.Service over the cache opened here.
type cacheAPI interface {
	Images(context.Context, admin.ImagesRequest) (admin.ImagesReport, error)
	GC(context.Context, admin.GCRequest) (admin.GCReport, error)
	Verify(context.Context, admin.VerifyRequest) (cache.VerifyReport, error)
}

var (
	_ cacheAPI = (*admin.Client)(nil)
	_ cacheAPI = (*admin.Service)(nil)
)

// cacheFlags are the flags of the commands that work on the cache root directly when the
// daemon is not running.
type cacheFlags struct {
	clientFlags
	root     string
	logLevel string
}

func (f *cacheFlags) register(cmd *cobra.Command) {
	f.clientFlags.register(cmd, true)
	fl := cmd.Flags()
	fl.Lookup("config").Usage = "configuration file to take the admin socket and, without the daemon, the root and the cache size from (env LIFEBOAT_CONFIG)"
	fl.StringVar(&f.root, "root", "", "without the daemon: the data directory to read (env LIFEBOAT_ROOT; default: root from --config, /var/lib/lifeboat)")
	fl.StringVar(&f.logLevel, "log-level", "", "without the daemon: log what the cache does at this level on stderr: trace, debug, info, warn, error (env LIFEBOAT_LOG_LEVEL; default: errors only)")
}

// withCache runs fn against the daemon or, when no daemon answers on the admin socket, against
// the cache root opened directly, saying so on stderr.
func (f *cacheFlags) withCache(cmd *cobra.Command, fn func(cacheAPI) error) error {
	// Without the daemon, the cache and the admin service run here and log as they do in the
	// daemon: the command's output says what happened, their lines are for when a level is
	// asked for.
	level := "error"
	if env := os.Getenv("LIFEBOAT_LOG_LEVEL"); env != "" {
		level = env
	}
	if cmd.Flags().Changed("log-level") {
		level = f.logLevel
	}
	if err := log.SetLevel(level); err != nil {
		return fmt.Errorf("log level %q is not one of trace, debug, info, warn, error", level)
	}
	err := fn(f.client())
	if !errors.Is(err, admin.ErrUnreachable) {
		return err
	}
	svc, root, closeCache, err := f.openLocal(cmd)
	if err != nil {
		return err
	}
	defer closeCache()
	fmt.Fprintf(cmd.ErrOrStderr(), "the lifeboat daemon is not running: working on %s directly\n", root)
	return fn(svc)
}

// localRoot is the data directory to open without the daemon: --root, else LIFEBOAT_ROOT,
// else the configuration's.
func (f *cacheFlags) localRoot(cmd *cobra.Command) (string, error) {
	cfg, err := f.load(cmd)
	if err != nil {
		return "", err
	}
	root := cfg.Root
	if env := os.Getenv("LIFEBOAT_ROOT"); env != "" {
		root = env
	}
	if cmd.Flags().Changed("root") {
		root = f.root
	}
	return root, nil
}

// openLocal opens the cache at the root for a command to run on without the daemon.
func (f *cacheFlags) openLocal(cmd *cobra.Command) (*admin.Service, string, func(), error) {
	cfg, err := f.load(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	root, err := f.localRoot(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	cfg.Root = root
	// daemon.Open creates a cache where there is none: look first.
	if _, err := os.Stat(filepath.Join(root, "index.db")); errors.Is(err, os.ErrNotExist) {
		return nil, "", nil, fmt.Errorf("the lifeboat daemon is not running (nothing answers on %s) and %s holds no lifeboat cache (set --root)", f.adminSocket, root)
	}
	d, err := daemon.Open(cmd.Context(), cfg, daemon.Options{Version: version})
	switch {
	case errdefs.IsUnavailable(err):
		return nil, "", nil, fmt.Errorf("the daemon at %s is not answering but holds %s (is --admin-socket right?)", f.adminSocket, root)
	case err != nil:
		return nil, "", nil, fmt.Errorf("cannot open the cache in %s: %w", root, err)
	}
	return d.Admin, root, func() { d.Close() }, nil
}

// needDaemon turns "no daemon" into a sentence that says the command needs one.
func needDaemon(cmd *cobra.Command, f *clientFlags, err error) error {
	if errors.Is(err, admin.ErrUnreachable) {
		return fmt.Errorf("%s needs the daemon, which is not running (nothing answers on %s)", cmd.Name(), f.adminSocket)
	}
	return err
}
